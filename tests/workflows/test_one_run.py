"""A job with one run, start to end: the steps in order, what is recorded, paid and released.
And the two endings that run nothing: a refused admission, a job that had ended."""

from __future__ import annotations

from tests.workflows.stub_network import Start, StubNetwork, steps
from workflows import contracts as c

ONE_RUN = [
    c.ADMIT_JOB, c.ALLOCATE_GPUS, c.PREPARE_TRANSFERS, c.STAGE_INPUTS, c.RECORD_JOB_STEPS,
    c.EXECUTE_JOB, c.RECORD_JOB_STEP, c.UPLOAD_OUTPUTS, c.RECORD_JOB_STEP, c.RELEASE_RUN,
    c.PLAN_CHECK, c.VERIFY_JOB,
    # One step (its parts as the stub records them): settle, reputation, release, finish.
    c.CLOSE_JOB, c.SETTLE_JOB, c.RECORD_REPUTATION, c.RELEASE_GPUS, c.FINISH_JOB,
    c.PLAN_CANARY,  # the accepted provider's canary, at its rate, after
]


async def test_a_run_goes_through_every_step_in_order_and_its_provider_is_paid(
    start: Start,
) -> None:
    net = StubNetwork()
    result = await (await start(net)).result()
    assert (result.state, result.provider_id) == ("SUCCEEDED", "p1")
    assert steps(net) == ONE_RUN
    recorded = [s.step for s in net.called(c.RECORD_JOB_STEPS)[0].steps]
    recorded += [s.step for s in net.called(c.RECORD_JOB_STEP)]
    assert recorded == ["inputs_staged", "execution_started", "execution_finished",
                        "outputs_uploaded"]
    # Every GPU step goes to the allocated provider, for the same attempt.
    for name in (c.STAGE_INPUTS, c.EXECUTE_JOB, c.UPLOAD_OUTPUTS):
        (req,) = net.called(name)
        assert (req.provider_id, req.attempt) == ("p1", 1), name
    (settle,) = net.called(c.SETTLE_JOB)
    assert [(p.provider_id, p.gpu_ms, p.payer, p.withheld) for p in settle.payments or []] == [
        ("p1", 1000, "client", False)]
    assert result.charged_micro == 1000  # what the settlement charged
    (rep,) = net.called(c.RECORD_REPUTATION)
    assert (rep.job_id, rep.provider_id, rep.outcome) == (result.job_id, "p1", "success")
    assert [r.provider_id for r in net.called(c.RELEASE_GPUS)] == ["p1"]
    (finish,) = net.called(c.FINISH_JOB)
    assert (finish.succeeded, finish.cancelled) == (True, False)


async def test_a_command_that_fails_fails_the_job_and_its_provider_is_still_paid(
    start: Start,
) -> None:
    """The network's check (p2, forced: tests/workflows/test_unverified.py) fails too."""
    net = StubNetwork(exit_codes={"p1": 3, "p2": 3})
    result = await (await start(net)).result()
    assert (result.state, result.reason) == ("FAILED", "the command exited with code 3")
    (settle,) = net.called(c.SETTLE_JOB)
    # The provider ran what it was given: its GPU time is paid.
    assert [(p.provider_id, p.payer, p.withheld) for p in settle.payments or []] == [
        ("p1", "client", False), ("p2", "network", False)]
    assert [r.outcome for r in net.called(c.RECORD_REPUTATION)] == ["success", "success"]
    assert [f.succeeded for f in net.called(c.FINISH_JOB)] == [False]


async def test_a_run_that_times_out_with_no_output_is_charged_but_not_paid(
    start: Start,
) -> None:
    """Nothing shows the provider worked (it might have heartbeated without running): the
    client pays for the window all the same, the network keeps it, the provider gets a
    timeout outcome."""
    net = StubNetwork(timeouts={"p1"})
    result = await (await start(net)).result()
    assert (result.state, result.reason) == ("FAILED", "timed out after 60 s")
    (settle,) = net.called(c.SETTLE_JOB)
    assert [(p.provider_id, p.gpu_ms, p.withheld) for p in settle.payments or []] == [
        ("p1", 60_000, True)]
    assert [(r.provider_id, r.outcome) for r in net.called(c.RECORD_REPUTATION)] == [
        ("p1", "timeout")]


async def test_a_provider_that_fails_its_step_is_replaced_and_blamed_once_another_runs_it(
    start: Start,
) -> None:
    """An error of the provider's own (not a loss): the run goes elsewhere, and once another
    provider got through, the failure is the first one's."""
    net = StubNetwork(refuses={"p1": (c.STAGE_INPUTS, "InputIntegrityError")})
    result = await (await start(net)).result()
    assert (result.state, result.provider_id) == ("SUCCEEDED", "p2"), result.reason
    (failed,) = net.called(c.RECORD_RUN_FAILED)
    assert (failed.provider_id, failed.attempt) == ("p1", 1)
    assert failed.reason == ("p1 failed its stage_inputs step: InputIntegrityError: p1 refused "
                             "the stage_inputs step")
    assert net.called(c.ALLOCATE_GPUS)[-1].excluded_provider_ids == ["p1"]
    assert [(r.job_id, r.provider_id, r.outcome) for r in net.called(c.RECORD_REPUTATION)] == [
        (f"{result.job_id}#1", "p1", "failure"), (result.job_id, "p2", "success")]
    (settle,) = net.called(c.SETTLE_JOB)
    assert [p.provider_id for p in settle.payments or []] == ["p2"]


async def test_a_job_no_provider_can_run_fails_refunded_and_blames_none(start: Start) -> None:
    net = StubNetwork(refuses={p: (c.STAGE_INPUTS, "InputIntegrityError") for p in ("p1", "p2")},
                      replica_wait_s=30)
    result = await (await start(net)).result()
    assert result.state == "FAILED"
    assert "InputIntegrityError: p2 refused the stage_inputs step" in result.reason
    assert [f.provider_id for f in net.called(c.RECORD_RUN_FAILED)] == ["p1", "p2"]
    assert not net.called(c.EXECUTE_JOB) and not net.called(c.RECORD_REPUTATION)
    (settle,) = net.called(c.SETTLE_JOB)
    assert not settle.pay_provider and not settle.payments  # all refunded


async def test_a_refused_admission_ends_rejected_and_runs_nothing(start: Start) -> None:
    net = StubNetwork(admitted=False)
    result = await (await start(net)).result()
    assert (result.state, result.reason) == (
        "REJECTED", "insufficient funds: the job may cost 1 credit")
    assert steps(net) == [c.ADMIT_JOB]


async def test_a_job_that_had_ended_returns_its_record_and_runs_nothing(start: Start) -> None:
    net = StubNetwork(ended=c.EndedJob("SUCCEEDED", "", "p1", 1234))
    result = await (await start(net)).result()
    assert (result.state, result.provider_id, result.charged_micro) == ("SUCCEEDED", "p1", 1234)
    assert steps(net) == [c.ADMIT_JOB]
