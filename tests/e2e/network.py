"""A whole network of real processes for a test: API, control worker, providers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from infra.devstack import Stack
from infra.settings import Settings
from tests.conftest import free_port

FAST_FAULTS = {
    "GPGPU_GPU_ACTIVITY_HEARTBEAT_TIMEOUT_S": "3",
    "GPGPU_GPU_SCHEDULE_TO_START_TIMEOUT_S": "6",
    "GPGPU_PROVIDER_HEARTBEAT_INTERVAL_S": "1",
    # Tests that count runs turn the network's own random checks off; one module turns them on.
    "GPGPU_ADAPTIVE_CHECKS": "false",
    # Likewise the known-answer canaries; tests/e2e/test_canaries.py turns them on at rate 1.
    "GPGPU_CANARIES": "false",
    "GPGPU_PROVIDER_OFFLINE_AFTER_S": "20",  # generous: a loaded CI machine delays beats
}


class Network:
    def __init__(self, stack: Stack):
        self.stack = stack
        self.url = stack.settings.api_url
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def gql(self, query: str, client: str = "demo", **variables: Any) -> dict[str, Any]:
        r = self.http.post(
            "/graphql", json={"query": query, "variables": variables},
            headers={"X-Gpgpu-Client": client},
        )
        r.raise_for_status()
        body = r.json()
        assert "errors" not in body, body["errors"]
        return body["data"]  # type: ignore[no-any-return]

    def put(self, client: str, key: str, data: bytes) -> dict[str, Any]:
        r = self.http.put(f"/storage/{client}/{key}", content=data,
                          headers={"X-Gpgpu-Client": client})
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def get(self, client: str, key: str) -> bytes:
        r = self.http.get(f"/storage/{client}/{key}", headers={"X-Gpgpu-Client": client})
        r.raise_for_status()
        return r.content

    def wait_providers_online(self, ids: list[str], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            data = self.gql("{ providers { providerId status } }")
            online = {p["providerId"] for p in data["providers"] if p["status"] == "online"}
            if set(ids) <= online:
                return
            time.sleep(0.3)
        raise AssertionError(f"providers {ids} did not come online: {data}")

    def wait_job(self, job_id: str, states: tuple[str, ...], client: str = "demo",
                 timeout_s: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.gql("query($id: ID!) { job(id: $id) { id state reason providerId"
                           " costMicro } }", client, id=job_id)["job"]
            if job and job["state"] in states:
                return job  # type: ignore[no-any-return]
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not reach {states}: {job}")


@contextmanager
def network(
    home: Path,
    temporal_address: str,
    providers: list[tuple[str, str, str, list[str]]],
    extra_env: dict[str, str] | None = None,
) -> Iterator[Network]:
    port = free_port()
    env = {
        **FAST_FAULTS,
        "GPGPU_TEMPORAL_ADDRESS": temporal_address,
        "GPGPU_API_PORT": str(port),
        "GPGPU_API_URL": f"http://127.0.0.1:{port}",
        "GPGPU_LOG_LEVEL": "WARNING",
        "GPGPU_CONTROL_TASK_QUEUE": f"control-{port}",
        **(extra_env or {}),
    }
    settings = Settings(
        home=home, temporal_address=temporal_address, api_port=port,
        api_url=f"http://127.0.0.1:{port}",
    )
    stack = Stack(settings, env)
    try:
        stack.start_control_plane()
        for provider_id, gpus, price, extra in providers:
            stack.start_provider(provider_id, gpus, price, *extra)
        net = Network(stack)
        net.wait_providers_online([p[0] for p in providers])
        yield net
    finally:
        stack.stop(quiet=True)
