"""Helpers for the job-lifecycle liveness tests against a real network (tests/e2e/network.py):
submit and follow a job, read the domain's own figures (ledger, reservations, reputation)."""

from __future__ import annotations

import time
from typing import Any

from domain.application import Network as Ledger
from domain.ledger import client_account
from tests.e2e.network import Network
from tests.support.graphql import JOB, SUBMIT

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "REJECTED")
# These tests are not about lost providers: on a loaded CI machine an agent may take more
# than FAST_FAULTS' 6 s to pick its work up, which would count it lost and requeue the job.
PATIENT = {"GPGPU_GPU_SCHEDULE_TO_START_TIMEOUT_S": "60",
           "GPGPU_GPU_ACTIVITY_HEARTBEAT_TIMEOUT_S": "20"}


def submit(net: Network, client: str, **spec: Any) -> str:
    body = {"name": "flow", "command": "echo 3.14159 > out.txt", "outputs": ["out.txt"],
            "max_price_per_gpu_hour": "2", "timeout": 120, **spec}
    result = net.gql(SUBMIT, client, s=body)["submitJob"]
    assert result["__typename"] == "JobSubmitted", result
    return str(result["job"]["id"])


def job(net: Network, client: str, job_id: str) -> dict[str, Any]:
    return dict(net.gql(JOB, client, id=job_id)["job"])


def finish(net: Network, client: str, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    net.wait_job(job_id, TERMINAL, client=client, timeout_s=timeout_s)
    return job(net, client, job_id)


def event_types(record: dict[str, Any]) -> list[str]:
    return [e["type"] for e in record["events"]]


def ledger(net: Network) -> Ledger:
    return Ledger(env=net.stack.settings.eventsourcing_env())


def held_gpus(net: Network, provider_ids: list[str], wait_s: float = 10) -> dict[str, Any]:
    """Reservations still held on these providers (after waiting a little for releases)."""
    deadline = time.monotonic() + wait_s
    while True:
        books = ledger(net)
        held = {p: dict(books.provider(p).reservations) for p in provider_ids}
        held = {p: r for p, r in held.items() if r}
        if not held or time.monotonic() > deadline:
            return held
        time.sleep(0.3)


def balance(net: Network, client: str) -> int:
    return ledger(net).balance(client_account(net.client_id(client)))


def wait_state(net: Network, client: str, job_id: str, state: str, timeout_s: float = 60) -> None:
    net.wait_job(job_id, (state,), client=client, timeout_s=timeout_s)
