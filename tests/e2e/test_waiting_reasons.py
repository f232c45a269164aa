"""Every waiting job says what it waits for, on a real network: a VERIFYING job whose
network check finds no provider of another owner, and a QUEUED job on the operator's
waiting list."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.e2e.network import ADMIN, Network, network
from tests.liveness.flow_support import PATIENT, finish, submit

pytestmark = pytest.mark.e2e

CHECK_WAIT_S = 12
JOB = "query($id: ID!) { job(id: $id) { state waitingFor } }"
QUEUE = """{ queue(name: "local/default") { jobId name waitingFor } }"""


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    env = {**PATIENT, "GPGPU_ADAPTIVE_CHECKS": "true", "GPGPU_CHECK_WAIT_S": str(CHECK_WAIT_S)}
    with network(tmp_path_factory.mktemp("waiting"), temporal_server,
                 [("only-a100", "1xA100:80", "1.0", [])], env) as n:
        yield n


def test_a_verifying_job_says_its_check_waits_for_another_owners_gpu(net: Network) -> None:
    job_id = submit(net, "wanda", resources={"gpus": 1, "gpu_model": "A100"},
                    verification={"reproducible": True})
    deadline = time.monotonic() + 60
    seen: list[str] = []
    while time.monotonic() < deadline:
        job = net.gql(JOB, "wanda", id=job_id)["job"]
        if job["state"] == "VERIFYING" and any("another run" in w and "waiting in" in w
                                               for w in job["waitingFor"]):
            seen = job["waitingFor"]
            break
        assert job["state"] not in ("SUCCEEDED", "FAILED"), job
        time.sleep(0.3)
    assert seen, "the job never said what its check waits for"
    (why,) = [w for w in seen if "another run" in w]
    assert "on a provider of another owner" in why
    assert "waiting in default: no eligible GPUs free" in why, why  # the scheduler's words
    assert finish(net, "wanda", job_id, timeout_s=90)["state"] == "SUCCEEDED"
    assert net.gql(JOB, "wanda", id=job_id)["job"]["waitingFor"] == []


def test_the_operators_waiting_list_says_why_each_job_waits(net: Network) -> None:
    job_id = submit(net, "cheapskate", max_price_per_gpu_hour="0.1")
    time.sleep(1.0)
    rows = {r["jobId"]: r for r in net.gql(QUEUE, ADMIN)["queue"]}
    assert rows[job_id]["name"] == "flow"
    (why,) = rows[job_id]["waitingFor"]
    assert why.startswith("no provider can take it now: only-a100:") and "price" in why, why
    net.gql("mutation($id: ID!) { cancelJob(id: $id) { ... on Job { id } } }", "cheapskate",
            id=job_id)
