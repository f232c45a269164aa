"""JobWorkflow's bounded waits, every branch, in seconds: the real workflow under Temporal's
time-skipping test server, its activities played by tests/workflows/stub_network.py.
The same behaviour against the real network: tests/liveness/test_bounded_checks.py.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.workflows.stub_network import Start, StubNetwork, steps
from workflows import contracts as c


async def test_a_check_run_that_finds_no_provider_is_skipped_and_the_job_settles(
    start: Start,
) -> None:
    net = StubNetwork(placeable={"p1"}, run_check=True)  # only one provider can ever run it
    result = await (await start(net)).result()
    assert result.state == "SUCCEEDED", result.reason
    unplaced = net.called(c.RECORD_UNPLACED)
    assert [(u.purpose, u.attempt) for u in unplaced] == [("check", 2)]
    assert unplaced[0].reason == "the network's check found no independent provider within 60 s"
    # The job's own run freed its GPUs as soon as it finished, before the check waited.
    order = steps(net)
    assert order.index(c.RELEASE_RUN) < order.index(c.RECORD_UNPLACED)
    assert net.called(c.RELEASE_RUN)[0].provider_id == "p1"
    paid = net.called(c.SETTLE_JOB)[0].payments or []
    assert [p.provider_id for p in paid] == ["p1"]  # the provider is paid for its run
    assert [f.succeeded for f in net.called(c.FINISH_JOB)] == [True]


async def test_a_check_that_is_placed_runs_and_releases_each_run_when_it_ends(
    start: Start,
) -> None:
    net = StubNetwork(run_check=True)
    result = await (await start(net)).result()
    assert result.state == "SUCCEEDED"
    assert result.provider_id == "p1"  # the accepted run's provider, not the check's
    assert [r.provider_id for r in net.called(c.RELEASE_RUN)] == ["p1", "p2"]
    assert not net.called(c.RECORD_UNPLACED)


async def test_a_tie_break_that_cannot_be_placed_fails_the_job_with_a_full_refund(
    start: Start,
) -> None:
    net = StubNetwork(replicas=2, undecided_first=True)  # two providers: no third for it
    result = await (await start(net)).result()
    assert result.state == "FAILED"
    assert result.reason == "the tie-break found no independent provider within 120 s"
    assert [(u.purpose, u.attempt) for u in net.called(c.RECORD_UNPLACED)] == [("tie-break", 3)]
    (settle,) = net.called(c.SETTLE_JOB)
    assert not settle.pay_provider and not settle.payments  # nothing verified: nothing paid
    assert [f.succeeded for f in net.called(c.FINISH_JOB)] == [False]
    assert {r.provider_id for r in net.called(c.RELEASE_RUN)} == {"p1", "p2"}


async def test_the_networks_own_tie_break_unplaced_leaves_the_job_s_run_standing(
    start: Start,
) -> None:
    net = StubNetwork(run_check=True, undecided_first=True)
    result = await (await start(net)).result()
    assert result.state == "SUCCEEDED"
    assert [u.purpose for u in net.called(c.RECORD_UNPLACED)] == ["check"]
    final = net.called(c.VERIFY_JOB)[-1]
    assert final.others == []  # judged alone: the check run decides nothing


async def test_a_replica_that_cannot_be_placed_fails_the_job(start: Start) -> None:
    net = StubNetwork(replicas=2, placeable={"p1"})
    result = await (await start(net)).result()
    assert result.state == "FAILED"
    assert result.reason == "a replica found no independent provider within 120 s"
    settle = net.called(c.SETTLE_JOB)[0]
    assert not settle.pay_provider and not settle.payments


async def test_a_single_run_waits_in_the_queue_without_bound(start: Start) -> None:
    net = StubNetwork(placeable=set())
    handle = await start(net)
    await net.wait_started(c.ALLOCATE_GPUS)
    await asyncio.sleep(3)  # real seconds: the tries go on, no bound is set for them
    assert len(net.called(c.ALLOCATE_GPUS)) > 2
    assert (await handle.describe()).status.name == "RUNNING"  # type: ignore[union-attr]
    assert not net.called(c.RECORD_UNPLACED) and not net.called(c.FINISH_JOB)
    await handle.cancel()
    await net.wait_started(c.FINISH_JOB)
    assert (await handle.result()).state == "CANCELLED"


@pytest.mark.parametrize("step", [c.PREPARE_TRANSFERS, c.RECORD_JOB_STEPS, c.RECORD_JOB_STEP])
async def test_a_step_that_finds_the_job_ended_ends_the_run_with_its_record(
    start: Start, step: str
) -> None:
    net = StubNetwork(ended_at=step)
    result = await (await start(net)).result()
    assert (result.state, result.provider_id, result.charged_micro) == ("SUCCEEDED", "p1", 7)
    assert not net.called(c.SETTLE_JOB) and not net.called(c.FINISH_JOB)
    assert not net.called(c.EXECUTE_JOB if step != c.RECORD_JOB_STEP else c.UPLOAD_OUTPUTS)
