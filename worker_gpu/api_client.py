"""The provider agent's calls to the network's API: register, heartbeat, drain (GraphQL), and
its assignments (the provider API under /provider/v1, api/assignments.py).

All carry `Authorization: Bearer <GPGPU_API_KEY>`: the providers it registers belong to
that key's account, and only that account (or an admin) may heartbeat or manage them."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx

from infra.settings import Settings
from worker_gpu.discovery import GpuInfo, GpuTelemetry

log = logging.getLogger(__name__)

# Each mutation answers `<payload> | FieldError`: a refusal the agent's input caused names
# its field (api/features/agents.py); ApiRejected carries it as "field: message".
REFUSAL = "__typename ... on FieldError { field message }"
REGISTER_PROVIDER = f"""
mutation($input: RegisterProviderInput!) {{
  registerProvider(input: $input) {{ ... on Provider {{ providerId }} {REFUSAL} }}
}}
"""
DRAIN_PROVIDER = f"""
mutation($id: String!) {{
  drainProvider(providerId: $id) {{ ... on ProviderDrained {{ providerId }} {REFUSAL} }}
}}
"""
PROVIDER_HEARTBEAT = f"""
mutation($id: String!, $t: JSON) {{
  providerHeartbeat(providerId: $id, telemetry: $t) {{
    ... on HeartbeatReceived {{ providerId }} {REFUSAL} }}
}}
"""


# An API that cannot be reached is asked again this often at most, by the poll for
# assignments (worker_gpu/agent.py) and a step's report (worker_gpu/assignments.py): the
# control worker gives a step up as not picked up, or its provider as silent, once the
# network has heard other providers for the pickup bound or the heartbeat timeout (6 and
# 3 s in the test networks), so an agent still backing off from an API's restart lost
# its runs (test_kill_restart: a poll and a report 8 s out).
UNREACHABLE_BACKOFF_S = 1.0


class ApiUnreachable(Exception):
    """The API did not answer (down, starting, 5xx): worth trying again."""


class ApiRejected(Exception):
    """The API answered no: trying again will not change that."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def registration_input(
    provider_id: str,
    region: str,
    price_per_gpu_hour_micro: int,
    gpus: list[GpuInfo],
    runtimes: list[str] | None = None,
    node: str = "local",
    sandbox: str = "bwrap",
) -> dict[str, Any]:
    """sandbox: how this provider isolates jobs ("bwrap", "bwrap-rlimits" without control
    groups, "docker", or "none" when it runs them unsandboxed), shown on the provider to
    the network."""
    return {
        "node": node,
        "providerId": provider_id,
        "region": region,
        "pricePerGpuHourMicro": price_per_gpu_hour_micro,
        "runtimes": runtimes or ["process"],
        "sandbox": sandbox,
        "gpus": [
            {"index": g.index, "model": g.model, "memoryMb": g.memory_mb, "uuid": g.uuid}
            for g in gpus
        ],
    }


def agent_api_key() -> str | None:
    """The key the agent acts with (GPGPU_API_KEY, through Settings): a provider-scoped API
    key of the account that will own the providers it registers."""
    return Settings().api_key


class ProviderApi:
    """GraphQL and the provider API over HTTP (it owns an httpx.Client, which threads may
    share)."""

    def __init__(self, api_url: str, timeout_s: float = 10.0, api_key: str | None = None) -> None:
        self.base = api_url.rstrip("/")
        self.url = f"{self.base}/graphql"
        key = api_key if api_key is not None else agent_api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)

    def close(self) -> None:
        self._client.close()

    def _call(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._client.post(self.url, json={"query": query, "variables": variables})
        except httpx.HTTPError as err:
            raise ApiUnreachable(f"{type(err).__name__}: {err}") from None
        if response.status_code >= 500:
            raise ApiUnreachable(f"HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise ApiRejected(f"HTTP {response.status_code}: {response.text[:300]}") from None
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            raise ApiRejected("; ".join(str(e.get("message", e)) for e in errors))
        if not response.is_success or not isinstance(body.get("data"), dict):
            raise ApiRejected(f"HTTP {response.status_code}: {response.text[:300]}")
        data: dict[str, Any] = body["data"]
        return data

    def _mutate(self, query: str, name: str, variables: dict[str, Any]) -> dict[str, Any]:
        """The mutation's payload; ApiRejected "field: message" where it answered a
        FieldError."""
        answer = self._call(query, variables).get(name)
        if not isinstance(answer, dict):
            raise ApiRejected(f"{name}: the API answered {answer!r}")
        if answer.get("__typename") == "FieldError":
            field, message = answer.get("field"), answer.get("message")
            raise ApiRejected(f"{field}: {message}" if field else str(message))
        return answer

    def register(self, registration: dict[str, Any]) -> str:
        answer = self._mutate(REGISTER_PROVIDER, "registerProvider", {"input": registration})
        return str(answer["providerId"])

    def drain(self, provider_id: str) -> None:
        """Tell the network this provider takes no new work (its agent is stopping)."""
        self._mutate(DRAIN_PROVIDER, "drainProvider", {"id": provider_id})

    def _rest(self, method: str, path: str, body: dict[str, Any] | None = None,
              timeout_s: float | None = None) -> dict[str, Any]:
        try:
            response = self._client.request(
                method, f"{self.base}/provider/v1/{path}", json=body,
                timeout=timeout_s if timeout_s is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as err:
            raise ApiUnreachable(f"{type(err).__name__}: {err}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise ApiUnreachable(f"HTTP {response.status_code}: {response.text[:300]}")
        if not response.is_success:
            raise ApiRejected(f"HTTP {response.status_code}: {response.text[:300]}",
                              response.status_code)
        try:
            answer = response.json()
        except ValueError:
            raise ApiRejected(f"HTTP {response.status_code}: not JSON") from None
        if not isinstance(answer, dict):
            raise ApiRejected(f"HTTP {response.status_code}: not a JSON object")
        return answer

    def assignments(self, provider_id: str, wait_s: float) -> list[dict[str, Any]]:
        """This provider's new assignments; waits up to `wait_s` for one to come."""
        answer = self._rest("GET", f"providers/{provider_id}/assignments?wait_s={wait_s:g}",
                            timeout_s=wait_s + 10.0)
        found = answer.get("assignments")
        return [a for a in found if isinstance(a, dict)] if isinstance(found, list) else []

    def assignment_heartbeat(self, provider_id: str, aid: str, details: Any,
                             timeout_s: float | None = None,
                             log: dict[str, Any] | None = None) -> bool:
        """Alive, with the job's next chunk of output if any; True when the step is to stop
        (cancelled, or gone)."""
        body: dict[str, Any] = {"details": details if isinstance(details, dict) else {}}
        if log is not None:
            body["log"] = log
        answer = self._rest("POST", f"providers/{provider_id}/assignments/{aid}/heartbeat",
                            body, timeout_s=timeout_s)
        return bool(answer.get("cancel"))

    def complete(self, provider_id: str, aid: str, result: dict[str, Any]) -> None:
        self._rest("POST", f"providers/{provider_id}/assignments/{aid}/complete",
                   {"result": result})

    def fail(self, provider_id: str, aid: str, message: str, type_: str,
             non_retryable: bool = False, cancelled: bool = False) -> None:
        self._rest("POST", f"providers/{provider_id}/assignments/{aid}/fail", {
            "message": message[:4000], "type": type_, "nonRetryable": non_retryable,
            "cancelled": cancelled,
        })

    def heartbeat(self, provider_id: str, telemetry: list[GpuTelemetry]) -> None:
        self._mutate(
            PROVIDER_HEARTBEAT, "providerHeartbeat",
            {"id": provider_id, "t": [dataclasses.asdict(t) for t in telemetry]},
        )


class HeartbeatThread:
    """Tells the API every interval that this provider is alive, with its GPUs' telemetry.

    A failed beat is logged and the next one tried: an API restart must not
    take the provider down, and the node judges liveness from the beats it gets.
    """

    def __init__(
        self,
        api_url: str,
        provider_id: str,
        read_telemetry: Callable[[], list[GpuTelemetry]],
        interval_s: float,
    ) -> None:
        self._api_url = api_url
        self._provider_id = provider_id
        self._read_telemetry = read_telemetry
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="provider-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    def _telemetry(self) -> list[GpuTelemetry]:
        try:
            return self._read_telemetry()
        except Exception as err:
            log.warning("reading GPU telemetry failed: %s", err)
            return []

    def _loop(self) -> None:
        api = ProviderApi(self._api_url)
        failing = False
        try:
            while not self._stop.is_set():
                try:
                    api.heartbeat(self._provider_id, self._telemetry())
                    if failing:
                        log.info("provider heartbeat delivered again")
                    failing = False
                except (ApiUnreachable, ApiRejected) as err:
                    if not failing:  # once per outage, not every few seconds
                        log.warning("provider heartbeat failed: %s", err)
                    failing = True
                self._stop.wait(self._interval_s)
        finally:
            api.close()
