"""A job with one run, start to end: the steps in order, what is recorded, paid and released.
And the two endings that run nothing: a refused admission, a job that had ended."""

from __future__ import annotations

from tests.workflows.stub_network import Start, StubNetwork, steps
from workflows import contracts as c

ONE_RUN = [
    c.ADMIT_JOB, c.ALLOCATE_GPUS, c.PREPARE_TRANSFERS, c.STAGE_INPUTS, c.RECORD_JOB_STEPS,
    c.EXECUTE_JOB, c.RECORD_JOB_STEP, c.UPLOAD_OUTPUTS, c.RECORD_JOB_STEP, c.RELEASE_RUN,
    c.PLAN_CHECK, c.VERIFY_JOB, c.SETTLE_JOB, c.RECORD_REPUTATION, c.RELEASE_GPUS,
    c.FINISH_JOB,
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
    assert (settle.provider_id, settle.gpu_ms, settle.pay_provider) == ("p1", 1000, True)
    assert result.charged_micro == 1000  # what the settlement charged
    (rep,) = net.called(c.RECORD_REPUTATION)
    assert (rep.job_id, rep.provider_id, rep.outcome) == (result.job_id, "p1", "success")
    assert [r.provider_id for r in net.called(c.RELEASE_GPUS)] == ["p1"]
    (finish,) = net.called(c.FINISH_JOB)
    assert (finish.succeeded, finish.cancelled) == (True, False)


async def test_a_command_that_fails_fails_the_job_and_its_provider_is_still_paid(
    start: Start,
) -> None:
    net = StubNetwork(exit_codes={"p1": 3})
    result = await (await start(net)).result()
    assert (result.state, result.reason) == ("FAILED", "the command exited with code 3")
    (settle,) = net.called(c.SETTLE_JOB)
    assert settle.pay_provider  # the provider ran what it was given: its GPU time is paid
    assert [r.outcome for r in net.called(c.RECORD_REPUTATION)] == ["success"]
    assert [f.succeeded for f in net.called(c.FINISH_JOB)] == [False]


async def test_a_provider_that_refuses_the_job_fails_it_unpaid(start: Start) -> None:
    """A non-retryable refusal (the inputs changed in storage): nothing ran, nothing is paid,
    the GPUs are released."""
    net = StubNetwork(refuses={"p1": (c.STAGE_INPUTS, "InputIntegrityError")})
    result = await (await start(net)).result()
    assert result.state == "FAILED"
    assert result.reason == "InputIntegrityError: p1 refused the stage_inputs step"
    assert not net.called(c.EXECUTE_JOB)
    (settle,) = net.called(c.SETTLE_JOB)
    assert not settle.pay_provider
    assert [r.provider_id for r in net.called(c.RELEASE_GPUS)] == ["p1"]
    assert not net.called(c.RECORD_REPUTATION)


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
