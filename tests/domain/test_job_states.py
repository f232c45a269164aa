"""A job's states are defined once (domain/states.py): the Job aggregate moves to exactly
the state the table names for each event, and every Job event is in the table."""

from __future__ import annotations

from typing import Any

from eventsourcing.domain import Aggregate

from domain.application import Network
from domain.job import Job
from domain.states import ACTIVE_STATES, STATE_AFTER, TERMINAL_EVENTS, TERMINAL_STATES, JobState
from tests.domain.support import PRICE, START, Names, all_events, gpu, make_spec, run_lifecycle


def job_events(app: Network) -> list[Any]:
    return [e for e in all_events(app) if isinstance(e, Job.Event)]


def test_every_job_event_class_is_in_the_state_table() -> None:
    declared = {name for name, cls in vars(Job).items()
                if isinstance(cls, type) and issubclass(cls, Aggregate.Event)
                and name not in ("Event", "Created")}
    assert declared == set(STATE_AFTER)


def test_the_aggregate_moves_to_the_state_the_table_names_for_each_event() -> None:
    app = Network(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    run_lifecycle(app, Names("job-ok", "alice", "prov-a"))
    run_lifecycle(app, Names("job-bad", "bob", "prov-b"), succeed=False)
    app.open_client("poor", 10)
    app.submit_job("job-poor", "poor", make_spec())
    app.admit_job("job-poor")  # rejected: it cannot pay
    app.open_client("carol", START)
    app.submit_job("job-cancelled", "carol", make_spec())
    app.admit_job("job-cancelled")
    app.register_provider("flaky", "eu-west", PRICE, [gpu(0)])
    app.allocate("job-cancelled", 1, set(), {"flaky"})
    app.provider_lost("job-cancelled", 1, "flaky", "no heartbeat")
    app.finish_job("job-cancelled", False, "the client cancelled it", cancelled=True)

    seen: set[str] = set()
    jobs: dict[Any, Job | None] = {}
    for event in job_events(app):
        name = type(event).__name__
        before = jobs.get(event.originator_id)
        state_before = before.state if before is not None else None
        job = jobs[event.originator_id] = event.mutate(before)
        assert job is not None
        expected = STATE_AFTER[name]
        assert job.state == (expected if expected is not None else state_before), name
        seen.add(name)
    for name in ("JobRejected", "ProviderLost", "JobCancelled", "JobSucceeded",
                 "VerificationFailed", "JobVerified"):
        assert name in seen


def test_the_derived_sets() -> None:
    assert set(TERMINAL_STATES) == {"SUCCEEDED", "FAILED", "REJECTED", "CANCELLED"}
    assert set(TERMINAL_EVENTS) == {"JobSucceeded", "JobFailed", "JobRejected", "JobCancelled"}
    assert ACTIVE_STATES == ("STAGING", "RUNNING", "UPLOADING", "VERIFYING", "SETTLING")
    assert JobState.QUEUED == "QUEUED" and f"{JobState.QUEUED}" == "QUEUED"
