"""A whole network of real processes for a test: API, control worker, providers.

Tests name callers ("alice", "bob"): each distinct name becomes an account signed up
through the API (roles client unless `sign_up` said otherwise) whose session token is
sent as `Authorization: Bearer`; `client_id(name)` is its storage space. The simulated
providers run with an API key of the account `PROVIDER_OWNER`, which so owns them; `ADMIN`
is an admin made on the stores before the API starts, as `gpgpu admin create-admin` does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from infra.settings import Settings
from ops.admin import create_admin, grant_credits
from ops.devstack import Stack
from ops.launch import free_port
from tests.support.graphql import CREATE_KEY, SIGN_IN, SIGN_UP, accepted

FAST_FAULTS = {
    "GPGPU_GPU_ACTIVITY_HEARTBEAT_TIMEOUT_S": "3",
    "GPGPU_GPU_SCHEDULE_TO_START_TIMEOUT_S": "6",
    # The network's own outages borne (an API restart under load takes seconds); a step
    # whose try died in a killed control worker before it was published is tried again
    # after the heartbeat timeout plus this.
    "GPGPU_GPU_OUTAGE_GRACE_S": "20",
    "GPGPU_PROVIDER_HEARTBEAT_INTERVAL_S": "1",
    # Tests that count runs turn the network's own random checks off; one module turns them on.
    "GPGPU_ADAPTIVE_CHECKS": "false",
    # Likewise the known-answer canaries; tests/e2e/test_canaries.py turns them on at rate 1.
    "GPGPU_CANARIES": "false",
    "GPGPU_PROVIDER_OFFLINE_AFTER_S": "20",  # generous: a loaded CI machine delays beats
    # Every failed or empty-handed run gets the network's check on another owner; on a
    # network of one owner it is never placed: such a job ends once this wait is over.
    "GPGPU_CHECK_WAIT_S": "10",
}
# Sign-up gives no credits by default: each test account is granted these through the
# ledger, as `gpgpu up` grants its dev account (ops/admin.py grant_credits).
CREDITS_MICRO = 100_000_000
PASSWORD = "e2e password"
PROVIDER_OWNER = "providers"  # the account that owns the simulated providers
ADMIN = "admin"


@dataclass(frozen=True)
class Account:
    email: str
    token: str
    user_id: str
    client_id: str | None


class Network:
    def __init__(self, stack: Stack):
        self.stack = stack
        self.url = stack.settings.api_url
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.accounts: dict[str, Account] = {}

    def _anonymous(self, query: str, **variables: Any) -> dict[str, Any]:
        r = self.http.post("/graphql", json={"query": query, "variables": variables})
        r.raise_for_status()
        body = r.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def sign_up(self, name: str, roles: list[str]) -> Account:
        """The account `name` with these roles (once; later calls return it)."""
        if name not in self.accounts:
            email = f"{name}@e2e.test"
            if name == ADMIN:
                session = accepted(self._anonymous(SIGN_IN, e=email, p=PASSWORD)["signIn"])
            else:
                session = accepted(self._anonymous(SIGN_UP, e=email, p=PASSWORD,
                                                   r=roles)["signUp"])
            self.accounts[name] = Account(email, session["token"], session["user"]["id"],
                                          session["user"]["clientId"])
            if client_id := session["user"]["clientId"]:
                grant_credits(self.stack.settings, client_id, CREDITS_MICRO, "e2e")
        return self.accounts[name]

    def account(self, name: str) -> Account:
        return self.sign_up(name, ["provider"] if name == PROVIDER_OWNER else ["client"])

    def token(self, name: str) -> str:
        return self.account(name).token

    def client_id(self, name: str) -> str:
        client_id = self.account(name).client_id
        assert client_id, f"{name} has no client role"
        return client_id

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(name)}"}

    def api_key(self, name: str, scopes: list[str]) -> str:
        data = self.gql(CREATE_KEY, name, n=f"e2e-{len(scopes)}-{time.monotonic_ns()}", s=scopes)
        return str(data["createApiKey"]["key"])

    def gql(self, query: str, client: str = "demo", **variables: Any) -> dict[str, Any]:
        r = self.http.post(
            "/graphql", json={"query": query, "variables": variables},
            headers=self.headers(client),
        )
        r.raise_for_status()
        body = r.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def put(self, client: str, key: str, data: bytes) -> dict[str, Any]:
        r = self.http.put(f"/storage/{self.client_id(client)}/{key}", content=data,
                          headers=self.headers(client))
        r.raise_for_status()
        return r.json()

    def get(self, client: str, key: str, space: str | None = None) -> bytes:
        """`key` from `client`'s space, or (as that caller) from another `space`."""
        r = self.http.get(f"/storage/{space or self.client_id(client)}/{key}",
                          headers=self.headers(client))
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
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not reach {states}: {job}")


@contextmanager
def network(
    home: Path,
    temporal_address: str,
    providers: list[tuple[str, str, str, list[str]]],
    extra_env: dict[str, str] | None = None,
    owners: dict[str, str] | None = None,
) -> Iterator[Network]:
    """The network, its providers run with a provider key of `PROVIDER_OWNER`, or of the
    account `owners` names for them (a job's replicas need providers of distinct owners)."""
    port = free_port()
    env = {
        **FAST_FAULTS,
        "GPGPU_TEMPORAL_ADDRESS": temporal_address,
        "GPGPU_API_PORT": str(port),
        "GPGPU_API_URL": f"http://127.0.0.1:{port}",
        "GPGPU_LOG_LEVEL": "WARNING",
        "GPGPU_CONTROL_TASK_QUEUE": f"control-{port}",
        # Every test account signs up from 127.0.0.1; tests/liveness/test_quotas.py sets
        # a small limit to try it.
        "GPGPU_SIGN_UPS_PER_ADDRESS": "1000000",
        **(extra_env or {}),
    }
    settings = Settings(
        home=home, temporal_address=temporal_address, api_port=port,
        api_url=f"http://127.0.0.1:{port}",
    )
    create_admin(settings, f"{ADMIN}@e2e.test", PASSWORD)
    stack = Stack(settings, env)
    try:
        stack.start_control_plane()
        net = Network(stack)
        net.sign_up(ADMIN, [])
        keys: dict[str, str] = {}
        for provider_id, gpus, price, extra in providers:
            owner = (owners or {}).get(provider_id, PROVIDER_OWNER)
            if owner not in keys:
                net.sign_up(owner, ["provider"])
                keys[owner] = net.api_key(owner, ["provider"])
            stack.env["GPGPU_API_KEY"] = keys[owner]
            stack.start_provider(provider_id, gpus, price, *extra)
        stack.env["GPGPU_API_KEY"] = keys.get(PROVIDER_OWNER) or net.api_key(PROVIDER_OWNER,
                                                                             ["provider"])
        net.wait_providers_online([p[0] for p in providers])
        yield net
    finally:
        stack.stop(quiet=True)
