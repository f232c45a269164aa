"""A provider that stops answering is lost: the run goes back to allocation without it and
starts again elsewhere; when every try loses its provider, the job fails with a full refund.

A provider is lost when its assignment is not picked up in time (the control plane fails it
as AssignmentNotPickedUp), when the control plane stops hearing it while it could hear
(ProviderSilent), or when nothing heartbeats its step past the outage grace (Temporal times
the step out: the backstop): each at each GPU step. The same against real processes:
tests/e2e/test_provider_dies.py.
"""

from __future__ import annotations

import pytest

from tests.workflows.stub_network import Start, StubNetwork
from workflows import contracts as c

GPU_STEPS = [c.STAGE_INPUTS, c.EXECUTE_JOB, c.UPLOAD_OUTPUTS]
# Heartbeat timeouts pass in real time (the test server does not skip time while an activity
# runs), so a silent provider's steps time out after this; every step of an answering stub
# provider completes within milliseconds of its start.
HEARTBEAT_TIMEOUT_S = 2.0
SILENT = {"gpu_heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S, "gpu_outage_grace_s": 0.0}


@pytest.mark.parametrize("how", ["unpicked", "silenced", "silent"])
@pytest.mark.parametrize("step", GPU_STEPS)
async def test_a_lost_provider_is_marked_and_the_run_moves_to_another(
    start: Start, step: str, how: str
) -> None:
    net = StubNetwork(**{f"{how}_at": {"p1": step}})  # type: ignore[arg-type]
    result = await (await start(net, **SILENT)).result()
    assert (result.state, result.provider_id) == ("SUCCEEDED", "p2"), result.reason
    (lost,) = net.called(c.MARK_PROVIDER_LOST)
    assert (lost.provider_id, lost.attempt) == ("p1", 1)
    assert lost.reason == f"p1 stopped answering during {step}"
    second = net.called(c.ALLOCATE_GPUS)[-1]
    # Lost once: p1 is the run's last resort, not out of it; p2 was free, so p2 ran it.
    assert (second.attempt, second.excluded_provider_ids, second.avoided_provider_ids) == (
        2, [], ["p1"])
    # Only the run that finished is judged, paid and released at the end.
    (verify,) = net.called(c.VERIFY_JOB)
    assert (verify.provider_id, verify.attempt, verify.others) == ("p2", 2, [])
    (settle,) = net.called(c.SETTLE_JOB)
    assert [p.provider_id for p in settle.payments or []] == ["p2"]
    assert [r.provider_id for r in net.called(c.RECORD_REPUTATION)] == ["p2"]
    assert [r.provider_id for r in net.called(c.RELEASE_GPUS)] == ["p2"]


async def test_losing_every_provider_fails_the_job_with_a_full_refund(start: Start) -> None:
    providers = ["p1", "p2", "p3"]
    net = StubNetwork(providers=providers, placeable=set(providers),
                      unpicked_at=dict.fromkeys(providers, c.STAGE_INPUTS))
    result = await (await start(net, max_provider_attempts=3)).result()
    assert result.state == "FAILED"
    assert result.reason == "lost 3 providers in a row: p1, p2, p3"
    assert [lost.provider_id for lost in net.called(c.MARK_PROVIDER_LOST)] == providers
    avoided = [a.avoided_provider_ids for a in net.called(c.ALLOCATE_GPUS)]
    assert avoided == [[], ["p1"], ["p1", "p2"]]
    (settle,) = net.called(c.SETTLE_JOB)
    assert not settle.pay_provider and not settle.payments  # nothing ran: all refunded
    assert not net.called(c.EXECUTE_JOB) and not net.called(c.RECORD_REPUTATION)
    assert [(f.succeeded, f.reason) for f in net.called(c.FINISH_JOB)] == [
        (False, "lost 3 providers in a row: p1, p2, p3")]


async def test_a_replica_that_loses_its_provider_runs_again_on_a_third(start: Start) -> None:
    net = StubNetwork(providers=["p1", "p2", "p3"], placeable={"p1", "p2", "p3"}, replicas=2,
                      silent_at={"p2": c.EXECUTE_JOB})
    result = await (await start(net, **SILENT)).result()
    assert result.state == "SUCCEEDED", result.reason
    assert [lost.provider_id for lost in net.called(c.MARK_PROVIDER_LOST)] == ["p2"]
    (settle,) = net.called(c.SETTLE_JOB)
    assert sorted(p.provider_id for p in settle.payments or []) == ["p1", "p3"]
    retry = net.called(c.ALLOCATE_GPUS)[-1]
    assert "p2" in retry.excluded_provider_ids and "p1" in retry.excluded_provider_ids


async def test_a_run_whose_only_provider_is_lost_and_stays_down_fails_refunded_in_bound(
    start: Start,
) -> None:
    """The job's own run, once its provider was lost, waits GPGPU_REPLICA_WAIT_S (120 s here,
    skipped) for a provider, not for ever (as its first try does: test_bounded_waits.py):
    then FAILED, refunded, blaming no one. In wall-clock time: tests/liveness/."""
    net = StubNetwork(placeable={"p1"}, silent_at={"p1": c.EXECUTE_JOB}, stays_down={"p1"})
    result = await (await start(net, **SILENT)).result()
    reason = ("p1 stopped answering during execute_job; the run, once its provider was lost, "
              "found no provider within 120 s")
    assert (result.state, result.reason) == ("FAILED", reason)
    assert [lost.provider_id for lost in net.called(c.MARK_PROVIDER_LOST)] == ["p1"]
    (unplaced,) = net.called(c.RECORD_UNPLACED)
    assert (unplaced.attempt, unplaced.purpose) == (2, "rerun")
    assert unplaced.reason == "the run, once its provider was lost, found no provider within 120 s"
    (settle,) = net.called(c.SETTLE_JOB)
    assert not settle.pay_provider and not settle.payments  # nothing verified: all refunded
    assert not net.called(c.RECORD_REPUTATION)  # the loss is p1's own record, nothing more
    assert [(f.succeeded, f.reason) for f in net.called(c.FINISH_JOB)] == [(False, reason)]


async def test_a_run_goes_back_to_its_only_provider_once_it_answers_again(start: Start) -> None:
    net = StubNetwork(placeable={"p1"}, silent_at={"p1": c.EXECUTE_JOB}, recovers={"p1"})
    result = await (await start(net, **SILENT)).result()
    assert (result.state, result.provider_id) == ("SUCCEEDED", "p1"), result.reason
    assert [a.provider_id for a in net.called(c.MARK_PROVIDER_LOST)] == ["p1"]
    (verify,) = net.called(c.VERIFY_JOB)
    assert (verify.provider_id, verify.attempt) == ("p1", 2)
    (settle,) = net.called(c.SETTLE_JOB)
    assert [p.provider_id for p in settle.payments or []] == ["p1"]
    assert not net.called(c.RECORD_UNPLACED)


async def test_a_provider_lost_twice_by_one_job_is_not_tried_a_third_time(start: Start) -> None:
    net = StubNetwork(placeable={"p1"}, silent_at={"p1": c.EXECUTE_JOB})  # back, lost again
    result = await (await start(net, **SILENT)).result()
    assert result.state == "FAILED"
    assert result.reason == (
        "2 runs lost their provider (p1, p1); the last: p1 stopped answering during "
        "execute_job; the run, once its provider was lost, found no provider within 120 s")
    tries = net.called(c.ALLOCATE_GPUS)
    assert (tries[-1].attempt, tries[-1].excluded_provider_ids,
            tries[-1].avoided_provider_ids) == (3, ["p1"], [])
    assert [lost.attempt for lost in net.called(c.MARK_PROVIDER_LOST)] == [1, 2]
    (settle,) = net.called(c.SETTLE_JOB)
    assert not settle.pay_provider and not settle.payments
