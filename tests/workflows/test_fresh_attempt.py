"""An attempt a Temporal reset's new run can neither run again nor take over (AttemptSpent:
activities/assign.py, activities/refusals.py) is left for a fresh attempt: its GPUs go back
(record_unplaced), its provider is neither blamed nor paid, and the job's attempt budget
(max_provider_attempts) still bounds how many it runs. The same against a real network:
tests/liveness/test_reset_fresh_attempt.py."""

from __future__ import annotations

import pytest

from tests.workflows.stub_network import Start, StubNetwork
from workflows import contracts as c


@pytest.mark.parametrize("step", [c.STAGE_INPUTS, c.EXECUTE_JOB, c.UPLOAD_OUTPUTS])
async def test_an_attempt_that_cannot_be_taken_over_is_left_for_a_fresh_one(
    start: Start, step: str
) -> None:
    net = StubNetwork(providers=["p1"], placeable={"p1"}, spent_at={"p1": step})
    result = await (await start(net)).result()
    assert (result.state, result.provider_id) == ("SUCCEEDED", "p1"), result.reason
    (left,) = net.called(c.RECORD_UNPLACED)
    assert (left.attempt, left.purpose) == (1, c.ABANDONED)
    assert "AttemptSpent: p1's attempt cannot be taken over" in left.reason
    assert [a.attempt for a in net.called(c.ALLOCATE_GPUS)] == [1, 2]
    # The fresh attempt is not a setback of the job's: p1 is neither avoided nor excluded.
    second = net.called(c.ALLOCATE_GPUS)[-1]
    assert (second.excluded_provider_ids, second.avoided_provider_ids) == ([], [])
    assert not net.called(c.MARK_PROVIDER_LOST) and not net.called(c.RECORD_RUN_FAILED)
    (verify,) = net.called(c.VERIFY_JOB)
    assert verify.attempt == 2
    (settle,) = net.called(c.SETTLE_JOB)
    assert [(p.provider_id, p.gpu_ms) for p in settle.payments or []] == [("p1", 1000)]
    assert [(r.job_id, r.outcome) for r in net.called(c.RECORD_REPUTATION)] == [
        (result.job_id, "success")]


async def test_attempts_that_cannot_be_taken_over_are_bounded_by_the_attempt_budget(
    start: Start
) -> None:
    net = StubNetwork(providers=["p1"], placeable={"p1"},
                      refuses={"p1": (c.EXECUTE_JOB, c.ATTEMPT_SPENT)})
    result = await (await start(net, max_provider_attempts=3)).result()
    assert result.state == "FAILED"
    assert result.reason.startswith("3 attempts in a row could not be taken over after a reset"
                                    " of the job's workflow; the last: AttemptSpent"), result
    assert [u.attempt for u in net.called(c.RECORD_UNPLACED)] == [1, 2, 3]
    assert len(net.called(c.EXECUTE_JOB)) == 3
    assert not net.called(c.RECORD_REPUTATION)
    (settle,) = net.called(c.SETTLE_JOB)
    assert not settle.pay_provider and not settle.payments  # all refunded
