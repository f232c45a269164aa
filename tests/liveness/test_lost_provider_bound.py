"""A job whose only fitting provider dies ends within a bound (issue 13), on a real network.

The job's own run waits in the queue as long as it takes for its first placement; once its
provider was lost it waits at most GPGPU_REPLICA_WAIT_S for another (workflows/job.py
`_bound_s`). Each job here asks for a model only one provider has; kill -9 of that provider
mid-run, kept down: the job ends FAILED, saying which provider was lost and how long it
waited, the client refunded in full, no GPU held, and the provider's loss its only new
outcome. Brought back at once: the run goes back to it (lost once, it is the run's last
resort, runs_.lost_once) and the job succeeds, paid once.
The same with stub activities, in seconds: tests/workflows/test_lost_providers.py.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from tests.e2e.network import CREDITS_MICRO, Network, network
from tests.liveness.flow_support import (
    balance,
    event_types,
    finish,
    held_gpus,
    ledger,
    submit,
    wait_state,
)

pytestmark = pytest.mark.e2e

FLEET = [
    ("solo-a100", "1xA100:80", "1.0", []),
    ("solo-l4", "1xL4:24", "1.0", []),
    ("h-1", "1xH100:80", "1.0", []),
]
IDS = [p[0] for p in FLEET]
# Long enough for a restarted agent to start and take its rerun on a loaded machine (8 s
# was missed once: its imports, the sandbox check and registering took longer).
WAIT_S = 15
# FAST_FAULTS' heartbeat timeout: a killed provider is found lost within seconds.
HEARTBEAT_TIMEOUT_S = 3
SLACK_S = 25  # a loaded machine: the kill noticed, the wait's cancel, settling, the read model
SLOW = "for i in 1 2 3 4 5 6 7 8; do echo tick $i; sleep 1; done; echo 3.14159 > out.txt"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    # A restarted agent may take a while to pick its assignment up on a loaded machine:
    # only a heartbeat that stops counts as a loss here.
    env = {"GPGPU_REPLICA_WAIT_S": str(WAIT_S), "GPGPU_GPU_SCHEDULE_TO_START_TIMEOUT_S": "30"}
    with network(tmp_path_factory.mktemp("lost-bound"), temporal_server, FLEET, env) as n:
        yield n


def kill(net: Network, provider_id: str) -> None:
    child = next(c for c in net.stack.children
                 if c.name == provider_id and c.proc.poll() is None)
    child.proc.send_signal(signal.SIGKILL)
    child.proc.wait()


def run_until_killed(net: Network, client: str, model: str, victim: str) -> tuple[str, float]:
    job_id = submit(net, client, command=SLOW, resources={"gpu_model": model})
    wait_state(net, client, job_id, "RUNNING")
    assert net.wait_job(job_id, ("RUNNING",), client)["providerId"] == victim
    time.sleep(1.0)
    kill(net, victim)
    return job_id, time.monotonic()


def test_a_job_whose_only_provider_dies_fails_in_bound_refunded(net: Network) -> None:
    before = list(ledger(net).provider("solo-a100").outcomes)
    job_id, killed_at = run_until_killed(net, "ann", "A100", "solo-a100")
    record = finish(net, "ann", job_id, timeout_s=HEARTBEAT_TIMEOUT_S + WAIT_S + 60)
    took = time.monotonic() - killed_at
    assert record["state"] == "FAILED", record
    assert took < HEARTBEAT_TIMEOUT_S + WAIT_S + SLACK_S, took
    assert record["reason"] == (
        f"solo-a100 stopped answering during execute_job; the run, once its provider was "
        f"lost, found no provider within {WAIT_S} s"
    )
    types = event_types(record)
    assert types.index("ProviderLost") < types.index("RunUnplaced")
    unplaced = next(e["data"] for e in record["events"] if e["type"] == "RunUnplaced")
    assert (unplaced["purpose"], unplaced["attempt"]) == ("rerun", 2)
    assert record["costMicro"] == 0
    assert balance(net, "ann") == CREDITS_MICRO  # a new client: the whole escrow came back
    assert ledger(net).balance(f"escrow:{job_id}") == 0
    assert held_gpus(net, IDS) == {}
    # The loss is on the provider's record as before; being unplaced blames no one.
    assert list(ledger(net).provider("solo-a100").outcomes) == [*before, "lost"]


def test_a_job_whose_only_provider_comes_back_runs_there_again(net: Network) -> None:
    job_id, _ = run_until_killed(net, "bea", "L4", "solo-l4")
    net.stack.start_provider("solo-l4", "1xL4:24", "1.0")  # back at once
    record = finish(net, "bea", job_id, timeout_s=120)
    assert record["state"] == "SUCCEEDED", record["reason"]
    assert record["providerId"] == "solo-l4"
    allocated = [e["data"]["provider_id"] for e in record["events"]
                 if e["type"] == "GpusAllocated"]
    assert allocated == ["solo-l4", "solo-l4"]
    assert event_types(record).count("ProviderLost") == 1
    assert "RunUnplaced" not in event_types(record)
    settled = next(e["data"] for e in record["events"] if e["type"] == "JobSettled")
    assert balance(net, "bea") == CREDITS_MICRO - settled["charged_micro"]
    assert settled["charged_micro"] == record["costMicro"] > 0
    assert held_gpus(net, IDS) == {}
