"""A job's lifecycle as events, on every event store: order, idempotency, refusals, loss."""

from __future__ import annotations

import pytest

from domain.application import Network
from domain.errors import InvalidTransition, UnknownJob, UnknownProvider
from domain.job import Job
from tests.domain.support import (
    CHARGED,
    JOB_EVENTS_SUCCESS,
    MAX_COST,
    PRICE,
    START,
    STEPS,
    Names,
    all_events,
    event_type,
    events_of,
    gpu,
    job_event_types,
    lifecycle_commands,
    make_spec,
    notification_count,
    provider_event_types,
    run_lifecycle,
    step_data,
)


def test_successful_job_events_in_order(app: Network) -> None:
    run_lifecycle(app)
    assert job_event_types(app, "job-1") == JOB_EVENTS_SUCCESS
    job = app.job("job-1")
    assert job.state == "SUCCEEDED"
    assert job.provider_id == "prov-1"
    assert job.attempt == 1
    assert job.max_cost_micro == MAX_COST
    assert provider_event_types(app, "prov-1") == [
        "ProviderRegistered",
        "GpusReserved",
        "ReputationRecorded",
        "GpusReleased",
    ]


def test_job_events_carry_what_happened(app: Network) -> None:
    run_lifecycle(app)
    events = {event_type(e): e for e in events_of(app, Job.create_id(job_id="job-1"))}
    assert events["JobSubmitted"].client_id == "alice"
    assert events["JobSubmitted"].spec["command"] == ["/bin/sh", "-c", "python train.py"]
    assert events["FundsEscrowed"].amount_micro == MAX_COST
    assert events["GpusAllocated"].provider_id == "prov-1"
    assert events["GpusAllocated"].gpu_indexes == [0]
    assert events["GpusAllocated"].price_per_gpu_hour_micro == PRICE
    assert events["ExecutionFinished"].exit_code == 0
    assert events["OutputsUploaded"].manifest[0]["path"] == "out/model.bin"
    assert events["JobVerified"].succeeded is True
    versions = [e.originator_version for e in events_of(app, Job.create_id(job_id="job-1"))]
    assert versions == list(range(1, len(JOB_EVENTS_SUCCESS) + 1))


def test_states_along_the_way(app: Network) -> None:
    seen = []
    for name, command in lifecycle_commands(app):
        command()
        if name not in ("open_client", "register_provider"):
            seen.append((name, app.job("job-1").state))
    assert seen == [
        ("submit_job", "SUBMITTED"),
        ("admit_job", "QUEUED"),
        ("allocate", "STAGING"),
        ("inputs_staged", "STAGING"),
        ("execution_started", "RUNNING"),
        ("execution_finished", "UPLOADING"),
        ("outputs_uploaded", "VERIFYING"),
        ("record_verdict", "SETTLING"),
        ("settle", "SETTLING"),
        ("record_reputation", "SETTLING"),
        ("release_gpus", "SETTLING"),
        ("finish_job", "SUCCEEDED"),
    ]


def test_failed_verification_path(app: Network) -> None:
    run_lifecycle(app, succeed=False)
    assert job_event_types(app, "job-1") == [
        *JOB_EVENTS_SUCCESS[:8],
        "VerificationFailed",
        "JobSettled",
        "ReputationRecorded",
        "GpusReleased",
        "JobFailed",
    ]
    job = app.job("job-1")
    assert job.state == "FAILED"
    assert job.reason == "hash mismatch"
    assert app.provider("prov-1").outcomes == ["mismatch"]


@pytest.mark.parametrize("succeed", [True, False])
def test_every_command_twice_records_what_once_records(app: Network, succeed: bool) -> None:
    for name, command in lifecycle_commands(app, succeed=succeed):
        first = command()
        count = notification_count(app)
        second = command()
        assert notification_count(app) == count, f"{name} recorded new events when repeated"
        assert second == first, f"{name} answered differently when repeated"
    expected = run_lifecycle_types(succeed)
    assert job_event_types(app, "job-1") == expected
    assert app.balance("client:alice") == START - (CHARGED if succeed else 0)


def run_lifecycle_types(succeed: bool) -> list[str]:
    if succeed:
        return JOB_EVENTS_SUCCESS
    return [*JOB_EVENTS_SUCCESS[:8], "VerificationFailed", "JobSettled", "ReputationRecorded",
            "GpusReleased", "JobFailed"]


def test_repeated_lifecycle_log_equals_single_lifecycle_log(app: Network) -> None:
    """The whole log (every aggregate's event types, in order) is the same run once or twice."""
    run_lifecycle(app)
    once = [(type(e).__qualname__, e.originator_version) for e in all_events(app)]
    run_lifecycle(app)  # everything again, same arguments
    twice = [(type(e).__qualname__, e.originator_version) for e in all_events(app)]
    assert twice == once


def test_terminal_job_refuses_new_steps(app: Network) -> None:
    run_lifecycle(app)
    count = notification_count(app)
    with pytest.raises(InvalidTransition) as info:
        app.record_step("job-1", "execution_started", 2, step_data("execution_started", "p"))
    assert str(info.value) == "job job-1 is SUCCEEDED; cannot record execution_started:2"
    with pytest.raises(InvalidTransition, match="is SUCCEEDED"):
        app.provider_lost("job-1", 2, "prov-1", "gone")
    with pytest.raises(InvalidTransition, match="is SUCCEEDED"):
        app.allocate("job-1", 2, set(), {"prov-1"})
    assert notification_count(app) == count
    assert app.provider("prov-1").reservations == {}  # the refused allocation booked nothing
    assert app.job("job-1").state == "SUCCEEDED"


def test_an_already_recorded_step_on_a_terminal_job_is_still_a_no_op(app: Network) -> None:
    run_lifecycle(app)
    count = notification_count(app)
    app.record_step("job-1", "execution_started", 1, step_data("execution_started", "prov-1"))
    app.finish_job("job-1", False, "late failure report")
    assert notification_count(app) == count
    assert app.job("job-1").state == "SUCCEEDED"


def test_unknown_step_is_refused(app: Network) -> None:
    run_lifecycle(app)
    with pytest.raises(InvalidTransition, match="unknown job step 'compile'"):
        app.record_step("job-1", "compile", 1, {})


def test_unknown_job_and_provider(app: Network) -> None:
    with pytest.raises(UnknownJob, match="no job nope"):
        app.admit_job("nope")
    with pytest.raises(UnknownJob, match="no job nope"):
        app.record_step("nope", "execution_started", 1, {"provider_id": "p"})
    with pytest.raises(UnknownProvider, match="no provider ghost"):
        app.release_gpus("job-1", "ghost")
    assert notification_count(app) == 0


def test_submit_twice_keeps_the_first_spec(app: Network) -> None:
    app.submit_job("job-1", "alice", make_spec(timeout="1h"))
    app.submit_job("job-1", "mallory", make_spec(timeout="2h"))
    job = app.job("job-1")
    assert job.client_id == "alice"
    assert job.max_cost_micro == MAX_COST
    assert job_event_types(app, "job-1") == ["JobSubmitted"]


def test_admit_with_too_little_balance_rejects_and_moves_no_money(app: Network) -> None:
    app.open_client("poor", 1_000)
    app.submit_job("job-1", "poor", make_spec())
    admission = app.admit_job("job-1")
    assert admission.admitted is False
    assert admission.max_cost_micro == MAX_COST
    assert "insufficient balance" in admission.reason
    assert admission.reason == (
        "insufficient balance: the job may cost up to 2000000 micro-credits, the balance is 1000"
    )
    job = app.job("job-1")
    assert job.state == "REJECTED"
    assert job.reason == admission.reason
    assert job_event_types(app, "job-1") == ["JobSubmitted", "JobRejected"]
    assert app.balance("client:poor") == 1_000
    assert app.balance("escrow:job-1") == 0
    # Asking again answers the same and records nothing.
    count = notification_count(app)
    assert app.admit_job("job-1") == admission
    assert notification_count(app) == count
    # A rejected job is terminal.
    with pytest.raises(InvalidTransition, match="is REJECTED"):
        app.record_step("job-1", "inputs_staged", 1, step_data("inputs_staged", "p"))


def test_admit_with_exactly_enough_balance(app: Network) -> None:
    app.open_client("exact", MAX_COST)
    app.submit_job("job-1", "exact", make_spec())
    assert app.admit_job("job-1").admitted is True
    assert app.balance("client:exact") == 0
    assert app.balance("escrow:job-1") == MAX_COST


def lose_provider_mid_run(app: Network) -> None:
    """Two providers; the job lands on the cheaper one, which then disappears while running."""
    app.open_client("alice", START)
    app.submit_job("job-1", "alice", make_spec())
    app.admit_job("job-1")
    app.register_provider("cheap", "eu", 500_000, [gpu(0)])
    app.register_provider("steady", "us", 1_000_000, [gpu(0), gpu(1)])
    decision = app.allocate("job-1", 1, set(), {"cheap", "steady"})
    assert decision.provider_id == "cheap"
    app.record_step("job-1", "inputs_staged", 1, step_data("inputs_staged", "cheap"))
    app.record_step("job-1", "execution_started", 1, step_data("execution_started", "cheap"))
    app.provider_lost("job-1", 1, "cheap", "no heartbeat for 10s")


def test_only_the_provider_that_held_an_attempt_can_be_lost_from_it(app: Network) -> None:
    """Naming another provider as lost would cost it reputation for a job it never held."""
    app.open_client("alice", START)
    app.submit_job("job-1", "alice", make_spec())
    app.admit_job("job-1")
    app.register_provider("cheap", "eu", 500_000, [gpu(0)])
    app.register_provider("bystander", "us", 1_000_000, [gpu(0)])
    assert app.allocate("job-1", 1, set(), {"cheap"}).provider_id == "cheap"
    count = notification_count(app)

    with pytest.raises(InvalidTransition, match="is not bystander's"):
        app.provider_lost("job-1", 1, "bystander", "framed")
    with pytest.raises(InvalidTransition, match="is not cheap's"):
        app.provider_lost("job-1", 7, "cheap", "an attempt that never was")

    assert notification_count(app) == count
    assert app.provider("bystander").outcomes == []
    assert app.provider("bystander").status != "lost"


def test_a_failed_run_frees_its_gpus_requeues_and_names_only_its_own_provider(
    app: Network,
) -> None:
    """A provider's failure of its step is recorded on the job (RunFailed) and frees its
    GPUs; its outcome waits for the workflow's judgement. Nobody else can be named."""
    app.open_client("alice", START)
    app.submit_job("job-1", "alice", make_spec())
    app.admit_job("job-1")
    app.register_provider("cheap", "eu", 500_000, [gpu(0)])
    app.register_provider("bystander", "us", 1_000_000, [gpu(0)])
    assert app.allocate("job-1", 1, set(), {"cheap"}).provider_id == "cheap"
    count = notification_count(app)
    with pytest.raises(InvalidTransition, match="is not bystander's"):
        app.run_failed("job-1", 1, "bystander", "framed")
    assert notification_count(app) == count

    app.run_failed("job-1", 1, "cheap", "x" * 5000)
    app.run_failed("job-1", 1, "cheap", "again")  # a retried step records it once

    job = app.job("job-1")
    assert (job.state, job.provider_id, job.ran_elsewhere(1)) == ("QUEUED", None, True)
    assert "job-1" not in app.provider("cheap").reservations
    assert app.provider("cheap").outcomes == [] and app.provider("cheap").status != "lost"
    assert notification_count(app) == count + 2  # the job's event and the release


def test_provider_lost_requeues_frees_and_penalises(app: Network) -> None:
    lose_provider_mid_run(app)
    job = app.job("job-1")
    assert job.state == "QUEUED"
    assert job.provider_id is None
    cheap = app.provider("cheap")
    assert cheap.reservations == {}
    assert cheap.free_gpu_indexes() == [0]
    assert cheap.status == "lost"
    assert cheap.outcomes == ["lost"]
    assert cheap.reputation == pytest.approx(1 / 5)
    assert job_event_types(app, "job-1")[-1] == "ProviderLost"
    lost = events_of(app, Job.create_id(job_id="job-1"))[-1]
    assert (lost.provider_id, lost.reason, lost.attempt) == ("cheap", "no heartbeat for 10s", 1)
    assert provider_event_types(app, "cheap") == [
        "ProviderRegistered",
        "GpusReserved",
        "GpusReleased",
        "ProviderMarkedLost",
        "ReputationRecorded",
    ]
    # Repeating the report changes nothing.
    count = notification_count(app)
    app.provider_lost("job-1", 1, "cheap", "no heartbeat for 10s")
    assert notification_count(app) == count
    # Escrow is untouched: the job is going to run again.
    assert app.balance("escrow:job-1") == MAX_COST


def test_after_loss_the_next_allocation_picks_another_provider(app: Network) -> None:
    lose_provider_mid_run(app)
    # Even if the lost provider still looked online, the excluded set keeps it out.
    decision = app.allocate("job-1", 2, {"cheap"}, {"cheap", "steady"})
    assert decision.provider_id == "steady"
    assert decision.gpu_indexes == [0]
    assert decision.price_per_gpu_hour_micro == 1_000_000
    assert decision.rejected == {"cheap": "excluded: lost while running this job; offline"}
    job = app.job("job-1")
    assert (job.state, job.provider_id) == ("STAGING", "steady")
    assert app.provider("steady").reservations == {"job-1": [0]}
    assert app.provider("cheap").reservations == {}


def test_a_lost_provider_that_heartbeats_again_comes_back_online(app: Network) -> None:
    """The API's liveness monitor calls provider_online once the lost provider's agent beats
    after the loss (readmodel/telemetry.py): it takes work again; the loss stays in its record."""
    lose_provider_mid_run(app)
    app.provider_online("cheap")
    assert app.provider("cheap").status == "online"
    assert provider_event_types(app, "cheap")[-1] == "ProviderCameOnline"
    assert "lost" in app.provider("cheap").outcomes
    app.submit_job("job-2", "alice", make_spec())
    app.admit_job("job-2")
    assert app.allocate("job-2", 1, set(), {"cheap", "steady"}).provider_id == "cheap"


def test_a_lost_provider_takes_no_work_until_it_rejoins_or_beats_again(app: Network) -> None:
    lose_provider_mid_run(app)
    app.submit_job("job-2", "alice", make_spec())
    app.admit_job("job-2")
    decision = app.allocate("job-2", 1, set(), {"cheap", "steady"})
    assert decision.provider_id == "steady"
    assert decision.rejected == {"cheap": "offline"}
    app.register_provider("cheap", "eu", 500_000, [gpu(0)])  # the agent comes back
    assert app.provider("cheap").status == "online"
    assert provider_event_types(app, "cheap")[-1] == "ProviderRejoined"
    app.submit_job("job-3", "alice", make_spec())
    app.admit_job("job-3")
    assert app.allocate("job-3", 1, set(), {"cheap", "steady"}).provider_id == "cheap"


def test_register_provider_twice_records_once(app: Network) -> None:
    app.register_provider("p", "eu", PRICE, [gpu(0)])
    count = notification_count(app)
    app.register_provider("p", "eu", PRICE, [gpu(0)])
    assert notification_count(app) == count
    assert app.provider_ids() == ["p"]
    app.register_provider("p", "eu", 2 * PRICE, [gpu(0)])  # a changed price is recorded
    assert app.provider("p").price_per_gpu_hour_micro == 2 * PRICE
    assert provider_event_types(app, "p") == ["ProviderRegistered", "ProviderRejoined"]


def test_steps_are_recorded_once_per_attempt(app: Network) -> None:
    for name, command in lifecycle_commands(app, Names()):
        command()
        if name == "allocate":
            break
    for step in STEPS[:2]:
        app.record_step("job-1", step, 1, step_data(step, "prov-1"))
        app.record_step("job-1", step, 1, step_data(step, "prov-1"))
    assert job_event_types(app, "job-1")[-2:] == ["InputsStaged", "ExecutionStarted"]
    assert job_event_types(app, "job-1").count("InputsStaged") == 1
