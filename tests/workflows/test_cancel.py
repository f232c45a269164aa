"""A client's cancel at every step of a job: it ends CANCELLED, is settled once (the GPU time
used is paid, the rest refunded), and every GPU it held is released. The same against a real
network: tests/liveness/test_cancel_every_step.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from tests.workflows.stub_network import VERIFIER, Start, StubNetwork, blocked
from workflows import contracts as c

THREE = ["p1", "p2", "p3"]
# A cancel reaches a workflow task that runs a long local activity (a control step) when
# the task is renewed, at 0.8 of its timeout (10 s by default): shorter here, so a cancel
# during a control step takes three seconds, not eight. (A task that times out on a loaded
# machine runs its local activities again: control steps are at-least-once, idempotent.)
TASK_TIMEOUT_S = 4.0


@dataclass
class Case:
    network: dict[str, Any]
    reached: str  # what wait_started waits for before the cancel
    paid: Callable[[StubNetwork], set[str]] = lambda net: set()  # providers paid for time
    job: dict[str, Any] = field(default_factory=dict)


def ran(*providers: str) -> Callable[[StubNetwork], set[str]]:
    return lambda net: set(providers)


CASES = {
    "admitting": Case({"block": {c.ADMIT_JOB}}, blocked(c.ADMIT_JOB)),
    # A try in line outlasts the cancel's way to it (its heartbeats are throttled to 4.8 s):
    # a try that ends for want of GPUs after a cancel was asked is lost by the time-skipping
    # test server (no retry, no failure recorded; the dev server records the failure), and
    # the workflow would wait for it for ever.
    "queued": Case({"placeable": set(), "try_s": 30.0}, c.ALLOCATE_GPUS),
    "staging": Case({"block": {c.STAGE_INPUTS}}, blocked(c.STAGE_INPUTS)),
    "running": Case({"block": {c.EXECUTE_JOB}}, blocked(c.EXECUTE_JOB)),
    "uploading": Case({"block": {c.UPLOAD_OUTPUTS}}, blocked(c.UPLOAD_OUTPUTS), ran("p1")),
    "verifying": Case({"block": {c.VERIFY_JOB}}, blocked(c.VERIFY_JOB), ran("p1")),
    # (These too wait in line with tries that outlast the cancel's way to them.)
    "with a check pending": Case(
        {"placeable": {"p1"}, "run_check": True, "check_wait_s": 3600, "try_s": 30.0},
        "check waits", ran("p1")),
    # The queued replica's first try starts with the job and the cancel comes only once the
    # placed one has run (see reach): a longer try, that still outlasts the cancel's way.
    "with a replica queued": Case(
        {"placeable": {"p1"}, "replicas": 2, "replica_wait_s": 3600, "try_s": 60.0},
        "replica waits", ran("p1")),
    "tie-break queued": Case(
        {"providers": THREE, "placeable": {"p1", "p2"}, "replicas": 2, "liars": {"p2"},
         "replica_wait_s": 3600, "try_s": 30.0}, "tie-break waits", ran("p1", "p2")),
    "verifier running": Case(
        {"verifier": VERIFIER, "blocks_at": {"p2": c.EXECUTE_JOB}}, blocked(c.EXECUTE_JOB),
        ran("p1")),
    # Settle, reputation, release and finish are one step: the cancel's own close asks the
    # same settlement again, and finishes the job cancelled.
    "closing": Case({"block": {c.CLOSE_JOB}}, blocked(c.CLOSE_JOB), ran("p1")),
}


async def reach(net: StubNetwork, handle: WorkflowHandle[Any, c.JobResult], what: str) -> None:
    if not what.endswith(" waits"):
        await net.wait_started(what)
        return
    # A run waits for GPUs nobody has free: its allocation is being tried again and again,
    # and every other run has finished (released its GPUs: no GPU step of theirs in flight).
    # Replicas run at once: without the second condition the cancel could come as the placed
    # replica's stage, execute or upload completes, and the time-skipping test server refuses
    # a workflow task that asks to cancel an activity whose completion it has just taken
    # (FAILED_PRECONDITION "ACTIVITY_UNKNOWN for scheduledEventId"; the workflow task is
    # never retried and the workflow stalls). A real server records that cancel request and
    # ignores it (the activity's result stands, the job ends cancelled): not the workflow's bug.
    tries = {"check waits": 2, "replica waits": 2, "tie-break waits": 3}[what]
    async with asyncio.timeout(20):
        while (len({a.attempt for a in net.called(c.ALLOCATE_GPUS)}) < tries
               or len({r.attempt for r in net.called(c.RELEASE_RUN)}) < tries - 1):
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("step", list(CASES))
async def test_a_cancel_ends_the_job_cancelled_settled_once_with_its_gpus_released(
    start: Start, step: str
) -> None:
    case = CASES[step]
    net = StubNetwork(**case.network)
    handle = await start(net, TASK_TIMEOUT_S, **case.job)
    await reach(net, handle, case.reached)
    await handle.cancel()
    # Wait in real time for the workflow to wind down: awaiting the result at once would let
    # the time-skipping server jump past a step that is still stopping (its heartbeats too).
    await net.wait_started(c.FINISH_JOB)
    result = await handle.result()
    assert result.state == "CANCELLED", (step, result)
    assert result.reason == "cancelled by the client"
    # Finished as cancelled (a control step may run twice, alike: they are idempotent).
    assert {(f.succeeded, f.cancelled) for f in net.called(c.FINISH_JOB)} == {(False, True)}
    # Settled once: a settlement the cancel interrupted is asked again as it was, never
    # another one.
    settlements = net.called(c.SETTLE_JOB)
    assert len({repr(s) for s in settlements}) <= 1, settlements
    if step != "admitting":
        assert settlements, "an admitted job is settled"
    # Paid: the runs that had finished (or were running) when the cancel came.
    paid = set()
    for s in settlements:
        paid |= {p.provider_id for p in s.payments or [] if p.gpu_ms > 0}
        if s.payments is None and s.pay_provider:
            paid.add(s.provider_id)
    assert paid <= set(net.allocations.values())
    assert case.paid(net) <= paid, (step, paid)
    # Released: every GPU the job held.
    held = set(net.allocations.values())
    released = {r.provider_id for r in net.called(c.RELEASE_GPUS)}
    released |= {r.provider_id for r in net.called(c.RELEASE_RUN)}
    assert held <= released, (step, held, released)
    if step == "closing":  # the interrupted close, asked again as it was but cancelled
        interrupted, again = net.called(c.CLOSE_JOB)
        assert (again.settle, again.outcomes) == (interrupted.settle, interrupted.outcomes)
        assert again.finish.cancelled and not interrupted.finish.cancelled


async def test_a_cancel_whose_interrupted_close_committed_first_answers_with_its_ending(
    start: Start,
) -> None:
    """The close a cancel interrupts goes on in its thread and commits before the cancel's
    own close runs: the job ended SUCCEEDED, and the workflow says so, not CANCELLED (the
    same settlement and outcomes either way)."""
    net = StubNetwork(block={c.CLOSE_JOB}, close_commits_anyway=True)
    handle = await start(net, TASK_TIMEOUT_S)
    await net.wait_started(blocked(c.CLOSE_JOB))
    await handle.cancel()
    await net.wait_started(c.FINISH_JOB)  # the cancel's own close
    result = await handle.result()
    assert result.state == "SUCCEEDED" and result.reason.startswith("exit code 0"), result
    (interrupted, again) = net.called(c.CLOSE_JOB)
    assert again.finish.cancelled and (again.settle, again.outcomes) == (
        interrupted.settle, interrupted.outcomes)
