"""The domain's side of bounded waits, cancels and terminates: a run the workflow gave up
placing (CheckSkipped, RunUnplaced), a job whose workflow was terminated, and the job's
own record of its GPUs' release and its providers' reputation."""

from __future__ import annotations

import pytest

from domain.application import Network
from domain.errors import InvalidTransition
from domain.scheduling import Placement
from tests.domain.support import MAX_COST, PRICE, START, gpu, job_event_types, make_spec


def _running_job(app: Network) -> None:
    app.open_client("alice", START)
    app.submit_job("job-1", "alice", make_spec())
    app.admit_job("job-1")
    app.register_provider("prov-1", "eu-west", PRICE, [gpu(0)])
    app.register_provider("prov-2", "eu-west", PRICE, [gpu(0)])
    app.allocate("job-1", 1, set(), {"prov-1", "prov-2"})


def test_a_skipped_check_is_recorded_and_its_late_placement_refused(app: Network) -> None:
    _running_job(app)
    app.record_unplaced("job-1", 2, "check", "the network's check found no provider in 60 s")
    app.record_unplaced("job-1", 2, "check", "again")  # a retried step records nothing new
    assert job_event_types(app, "job-1").count("CheckSkipped") == 1
    other = "prov-2" if app.job("job-1").allocations[1] == "prov-1" else "prov-1"
    placement = Placement("job-1", 2, "alice", other, [0], PRICE)
    providers = {other: app.provider(other)}
    assert app.place([placement], providers) == [False]  # the scheduler's ticket lingered
    assert app.provider(other).reservations == {}
    with pytest.raises(InvalidTransition):
        app.job("job-1").record_allocation(2, other, [0], PRICE)


def test_an_unplaced_run_placed_as_the_wait_ended_gives_its_gpus_back(app: Network) -> None:
    _running_job(app)
    first = app.job("job-1").allocations[1]
    other = "prov-2" if first == "prov-1" else "prov-1"
    assert app.place([Placement("job-1", 2, "alice", other, [0], PRICE)],
                     {other: app.provider(other)}) == [True]
    app.record_unplaced("job-1", 2, "tie-break", "the tie-break found no provider in 300 s")
    assert app.provider(other).reservations == {}
    types = job_event_types(app, "job-1")
    assert "RunUnplaced" in types and types[-1] == "GpusReleased"


def test_a_job_whose_workflow_was_terminated_is_ended_refunded(app: Network) -> None:
    _running_job(app)
    assert app.end_abandoned("job-1", "the job's workflow was terminated by an operator", 500)
    job = app.job("job-1")
    assert (job.state, job.reason) == ("FAILED", "the job's workflow was terminated by an operator")
    assert job.settlement == {"charged_micro": 0, "provider_paid_micro": 0, "fee_micro": 0,
                              "refunded_micro": MAX_COST}
    assert app.balance("client:alice") == START
    assert all(app.provider(p).reservations == {} for p in ("prov-1", "prov-2"))
    assert not app.end_abandoned("job-1", "again", 500)  # an ended job is left as it is


def test_releases_and_reputation_show_on_the_job_once(app: Network) -> None:
    _running_job(app)
    provider = app.job("job-1").allocations[1]
    for _ in range(2):
        app.release_gpus("job-1", provider)
        app.record_reputation("job-1", provider, "success")
    types = job_event_types(app, "job-1")
    assert types.count("GpusReleased") == 1 and types.count("ReputationRecorded") == 1
