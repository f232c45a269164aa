"""Bounded waits with recorded outcomes, on a real network (issue 13 item 1, issue 12 item 6).

A100 is a model only one provider has: the network's check of an A100 job can never be
placed, and is skipped after GPGPU_CHECK_WAIT_S with CheckSkipped; the job settles. Two
runs of a client's replicated job that disagree need a third provider that does not
exist: the tie-break gives up after GPGPU_REPLICA_WAIT_S and the job fails, refunded.
A job that is not declared reproducible (it writes something of its run into its result,
as examples/hello does) is never compared, so no honest provider is blamed for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.e2e.network import CREDITS_MICRO, Network, network
from tests.liveness.flow_support import (
    PATIENT,
    balance,
    event_types,
    finish,
    held_gpus,
    ledger,
    submit,
)

pytestmark = pytest.mark.e2e

FLEET = [
    ("solo-a100", "1xA100:80", "1.0", []),
    ("h-1", "1xH100:80", "1.0", []),
    ("h-2", "1xH100:80", "1.2", []),
]
IDS = [p[0] for p in FLEET]
WAIT_S = 3
# Honest but nondeterministic: what it writes differs from run to run (the GPU it was
# given, the time), like examples/hello.
NONDETERMINISTIC = 'echo "$CUDA_VISIBLE_DEVICES $(date +%s%N)" > out.txt'


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    env = {**PATIENT, "GPGPU_ADAPTIVE_CHECKS": "true", "GPGPU_CHECK_WAIT_S": str(WAIT_S),
           "GPGPU_REPLICA_WAIT_S": str(WAIT_S)}
    # The two H100 providers belong to two accounts: a job's runs need distinct owners.
    owners = {"h-1": "owner-h1", "h-2": "owner-h2"}
    with network(tmp_path_factory.mktemp("bounded"), temporal_server, FLEET, env,
                 owners=owners) as n:
        yield n


def test_a_check_that_no_provider_can_run_is_skipped_and_the_job_settles(net: Network) -> None:
    started = time.monotonic()
    job_id = submit(net, "ann", resources={"gpus": 1, "gpu_model": "A100"},
                    verification={"reproducible": True})
    record = finish(net, "ann", job_id, timeout_s=90)
    assert record["state"] == "SUCCEEDED", record["reason"]
    assert time.monotonic() - started < 60  # not the job's timeout: the check's own bound
    types = event_types(record)
    skipped = [e["data"] for e in record["events"] if e["type"] == "CheckSkipped"]
    assert [s["reason"] for s in skipped] == [
        f"the network's check found no independent provider within {WAIT_S} s"
    ]
    # The run's GPUs went back before the check gave up; reputation shows on the job too.
    assert types.index("GpusReleased") < types.index("CheckSkipped")
    assert "ReputationRecorded" in types
    assert record["providerId"] == "solo-a100"
    assert record["costMicro"] > 0
    assert held_gpus(net, IDS) == {}


def test_a_nondeterministic_job_is_never_compared_and_blames_no_one(net: Network) -> None:
    before = {p: list(ledger(net).provider(p).outcomes) for p in IDS}
    job_id = submit(net, "bea", command=NONDETERMINISTIC)  # not declared reproducible
    record = finish(net, "bea", job_id)
    assert record["state"] == "SUCCEEDED", record["reason"]
    allocated = [e["data"]["provider_id"] for e in record["events"]
                 if e["type"] == "GpusAllocated"]
    assert len(allocated) == 1  # no check run, although every provider is on probation
    after = {p: list(ledger(net).provider(p).outcomes) for p in IDS}
    assert all("mismatch" not in after[p][len(before[p]):] for p in IDS), after


def test_a_tie_break_no_provider_can_run_fails_the_job_refunded(net: Network) -> None:
    start = CREDITS_MICRO  # a new client: granted through the ledger (tests/e2e/network.py)
    job_id = submit(net, "cid", command=NONDETERMINISTIC, resources={"gpu_model": "H100"},
                    verification={"replicas": 2})  # two H100 providers only: no third
    record = finish(net, "cid", job_id, timeout_s=90)
    assert record["state"] == "FAILED"
    assert record["reason"] == (
        f"the tie-break found no independent provider within {WAIT_S} s"
    )
    assert "RunUnplaced" in event_types(record)
    assert record["costMicro"] == 0  # nothing was verified: nothing is charged
    assert balance(net, "cid") == start
    assert held_gpus(net, IDS) == {}
