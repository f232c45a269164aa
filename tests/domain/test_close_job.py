"""A job's close (settle, reputation, release, finish) as one transaction: the same events as
the four commands one after the other, one save, nothing again when it is closed again,
and everything decided again when another writer got there first."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from domain.app_base import UNIT_TRIES
from domain.application import Network, Payment, SettlementFigures
from domain.errors import DomainError
from domain.provider import Provider
from infra.settings import Settings
from tests.domain.support import (
    CHARGED,
    FEE,
    FEE_BPS,
    GPU_MS,
    PAID,
    PRICE,
    REFUND,
    Names,
    all_events,
    event_type,
    gpu,
    lifecycle_commands,
    notification_count,
    provider_event_types,
)

ENDING = 4  # settle, record_reputation, release_gpus, finish_job: the lifecycle's last


def verified(app: Network, names: Names | None = None) -> None:
    """A job run and verified, up to its ending."""
    for _, command in lifecycle_commands(app, names)[:-ENDING]:
        command()


def close(app: Network, names: Names | None = None) -> SettlementFigures | None:
    n = names or Names()
    return app.close_job(
        n.job, [Payment(n.provider, GPU_MS, PRICE)], FEE_BPS, [(n.job, n.provider, "success")],
        [n.provider], True, "",
    )


def recorded(app: Network, start: int) -> list[tuple[Any, ...]]:
    """The events after the first `start`, as (type, aggregate, version, data) but for when
    each was recorded (its timestamp, an outcome's `at`)."""
    return [
        (event_type(e), e.originator_id, e.originator_version,
         sorted((k, v) for k, v in vars(e).items()
                if k not in ("originator_id", "originator_version", "timestamp", "at")))
        for e in all_events(app)[start:]
    ]


@pytest.fixture
def saves(app: Network) -> Iterator[list[int]]:
    """How many events each of the app's saves (each one transaction) recorded."""
    counts: list[int] = []
    save = app.save

    def counted(*objs: Any, **kwargs: Any) -> Any:
        recordings = save(*objs, **kwargs)
        counts.append(len(recordings))
        return recordings

    app.save = counted  # type: ignore[method-assign]
    yield counts


def test_one_close_records_what_the_four_commands_did_in_one_transaction(
    app: Network, saves: list[int]
) -> None:
    separate = Network(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    try:
        verified(separate)
        before = notification_count(separate)
        for _, command in lifecycle_commands(separate)[-ENDING:]:
            command()
        expected = recorded(separate, before)
    finally:
        separate.close()
    verified(app)
    before = notification_count(app)
    saves.clear()
    figures = close(app)
    assert figures == SettlementFigures(CHARGED, PAID, FEE, REFUND)
    assert saves == [len(expected)]  # one transaction, every event
    assert recorded(app, before) == expected  # the same events, data and order
    assert app.job("job-1").state == "SUCCEEDED"
    assert "job-1" not in app.provider("prov-1").reservations


def test_a_close_again_changes_nothing_and_returns_the_same_settlement(
    app: Network, saves: list[int]
) -> None:
    verified(app)
    first = close(app)
    count = notification_count(app)
    saves.clear()
    assert close(app) == first
    assert saves == [] and notification_count(app) == count
    # Nor does a close that would finish it another way, or any single command again.
    app.close_job("job-1", None, FEE_BPS, [("job-1", "prov-1", "mismatch")], ["prov-1"],
                  False, "cancelled by the client", cancelled=True)
    assert notification_count(app) == count
    assert app.job("job-1").state == "SUCCEEDED"


def test_each_command_of_a_close_sees_what_the_ones_before_it_changed(
    app: Network, saves: list[int]
) -> None:
    """Two runs on two providers: the provider whose outcome was recorded is released in
    the same unit; the job settled is finished; each account is opened once."""
    verified(app)
    app.register_provider("prov-2", "eu-west", PRICE, [gpu(0)])
    before = notification_count(app)
    saves.clear()
    figures = app.close_job(
        "job-1", [Payment("prov-1", GPU_MS, PRICE), Payment("prov-2", GPU_MS, PRICE, "network")],
        FEE_BPS, [("job-1#1", "prov-1", "success"), ("job-1#2", "prov-2", "success")],
        ["prov-1", "prov-2", "prov-1"], True, "",
    )
    assert figures is not None and figures.charged_micro == CHARGED
    assert len(saves) == 1 and saves[0] == notification_count(app) - before
    assert provider_event_types(app, "prov-1")[-2:] == ["ReputationRecorded", "GpusReleased"]
    assert provider_event_types(app, "prov-2")[-1:] == ["ReputationRecorded"]
    assert app.balance("provider:prov-2") > 0
    assert app.job("job-1").state == "SUCCEEDED"


# Two processes share a store only on disk or in PostgreSQL.
@pytest.mark.parametrize("settings", ["sqlite", "postgres"], indirect=True)
def test_a_close_that_loses_a_race_is_decided_again(
    settings: Settings, open_app: Callable[[], Network]
) -> None:
    """Another process writes the provider between the close's loads and its save: the
    whole close runs again on what is stored now, and records each thing once."""
    app, other = open_app(), open_app()
    verified(app)
    save, tries = app.save, []

    def racing(*objs: Any, **kwargs: Any) -> Any:
        tries.append(len(objs))
        if len(tries) == 1:
            other.record_reputation("job-0", "prov-1", "success")  # the provider moves on
        return save(*objs, **kwargs)

    app.save = racing  # type: ignore[method-assign]
    assert close(app) == SettlementFigures(CHARGED, PAID, FEE, REFUND)
    assert len(tries) == 2 and tries[0] == tries[1]  # lost once, then the same again
    fresh = open_app()
    assert fresh.job("job-1").state == "SUCCEEDED"
    assert fresh.provider("prov-1").outcome_jobs.count("job-1") == 1
    assert "job-0" in fresh.provider("prov-1").outcome_jobs
    assert provider_event_types(fresh, "prov-1").count("GpusReleased") == 1
    assert fresh.balance("provider:prov-1") == PAID


def test_a_domain_error_midway_saves_nothing_and_leaves_no_unit_or_cache_behind(
    app: Network,
) -> None:
    verified(app)
    before = notification_count(app)
    with pytest.raises(DomainError):
        app.close_job("job-1", [Payment("prov-1", GPU_MS, PRICE)], FEE_BPS,
                      [("job-1", "prov-1", "success"), ("job-1#2", "prov-1", "bogus")],
                      ["prov-1"], True, "")
    assert app._unit() is None
    assert notification_count(app) == before
    # Nothing of the failed unit is seen by later loads in this thread (the cache intact).
    assert app.job("job-1").settlement is None
    assert "job-1" in app.provider("prov-1").reservations
    assert "job-1" not in app.provider("prov-1").outcome_jobs
    assert app.balance("provider:prov-1") == 0
    assert close(app) == SettlementFigures(CHARGED, PAID, FEE, REFUND)
    assert app.provider("prov-1").outcome_jobs.count("job-1") == 1


def test_a_snapshot_is_taken_where_a_units_event_reaches_the_interval(app: Network) -> None:
    verified(app)
    pid = Provider.create_id(provider_id="prov-1")
    version = app.provider("prov-1").version
    for n in range((49 - version) % 50):  # one event short of the next multiple of 50
        app.record_reputation(f"other-{n}", "prov-1", "success")
    assert app.provider("prov-1").version % 50 == 49
    close(app)  # its outcome (the 50th) and its release in one save
    snaps = list(app.snapshots.get(pid)) if app.snapshots else []
    assert snaps and snaps[-1].originator_version == app.provider("prov-1").version - 1


@pytest.mark.parametrize("settings", ["sqlite", "postgres"], indirect=True)
def test_the_sweepers_end_of_a_job_that_its_close_ended_meanwhile_changes_nothing(
    settings: Settings, open_app: Callable[[], Network]
) -> None:
    """end_abandoned (a job whose workflow an operator terminated mid-close) loses the race
    to that close's thread: its unit runs again on the job as stored, which has ended."""
    sweeper, worker = open_app(), open_app()
    verified(sweeper)
    save, tries = sweeper.save, []

    def racing(*objs: Any, **kwargs: Any) -> Any:
        tries.append(1)
        if len(tries) == 1:
            close(worker)  # the terminated workflow's close commits first
        return save(*objs, **kwargs)

    sweeper.save = racing  # type: ignore[method-assign]
    assert sweeper.end_abandoned("job-1", "the job's workflow was terminated", FEE_BPS) is False
    assert len(tries) == 1  # the second try found it ended: nothing to save
    job = sweeper.job("job-1")
    assert job.state == "SUCCEEDED" and job.settlement is not None
    assert job.settlement["charged_micro"] == CHARGED


@pytest.mark.parametrize("settings", ["sqlite", "postgres"], indirect=True)
def test_a_close_that_loses_every_race_as_one_is_made_one_command_at_a_time(
    settings: Settings, open_app: Callable[[], Network]
) -> None:
    """A provider's own churn (another process writing it before each of the close's saves)
    cannot hold the close up: past UNIT_TRIES lost races its commands run one at a time,
    each recorded once, the settlement made."""
    app, other = open_app(), open_app()
    verified(app)
    save, tries = app.save, []

    def racing(*objs: Any, **kwargs: Any) -> Any:
        tries.append(len(objs))
        if len(tries) <= UNIT_TRIES:
            other.record_reputation(f"churn-{len(tries)}", "prov-1", "success")
        return save(*objs, **kwargs)

    app.save = racing  # type: ignore[method-assign]
    assert close(app) == SettlementFigures(CHARGED, PAID, FEE, REFUND)
    assert len(tries) == UNIT_TRIES + ENDING  # then settle, reputation, release, finish
    assert app.provider("prov-1").outcome_jobs.count("job-1") == 1
    assert app.job("job-1").state == "SUCCEEDED"
