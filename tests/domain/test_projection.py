"""The read model: the Projector folds the log into views, once per event, on every store."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from eventsourcing.domain import Aggregate

from domain.application import Network
from domain.errors import DomainError
from domain.job import Job
from domain.ledger import Account
from domain.node import Node
from domain.provider import Provider
from domain.reputation import reputation_score
from domain.states import STATE_AFTER
from infra.settings import Settings
from readmodel.folding import HANDLERS
from readmodel.projector import Projector
from readmodel.schema import ViewDB
from tests.domain.support import (
    CHARGED,
    JOB_EVENTS_SUCCESS,
    MAX_COST,
    PRICE,
    START,
    Names,
    account_names,
    events_of,
    gpu,
    job_event_types,
    lifecycle_commands,
    make_spec,
    notification_count,
    notification_ids,
    run_lifecycle,
    step_data,
)

OpenViews = Callable[[], ViewDB]


def table_names(db: ViewDB) -> list[str]:
    if db.is_postgres:
        rows = db.query(
            "SELECT table_name AS name FROM information_schema.tables"
            " WHERE table_schema = current_schema()"
        )
    else:
        rows = db.query("SELECT name FROM sqlite_master WHERE type = 'table'")
    return sorted(r["name"] for r in rows)


def snapshot(db: ViewDB) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every view table, in a stable order."""
    return {
        table: sorted((tuple(r.items()) for r in db.query(f"SELECT * FROM {table}")), key=repr)
        for table in table_names(db)
    }


def job_row(db: ViewDB, job_id: str) -> dict[str, Any]:
    (row,) = db.query("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
    return row


def provider_row(db: ViewDB, provider_id: str) -> dict[str, Any]:
    (row,) = db.query("SELECT * FROM providers WHERE provider_id = ?", (provider_id,))
    return row


def job_events(db: ViewDB, job_id: str) -> list[dict[str, Any]]:
    return db.query("SELECT * FROM job_events WHERE job_id = ? ORDER BY seq", (job_id,))


def assert_views_match_the_app(app: Network, db: ViewDB) -> None:
    """Every account balance and every job's event list agree with the aggregates."""
    accounts = {r["name"]: r["balance_micro"] for r in db.query("SELECT * FROM accounts")}
    assert accounts == {name: app.balance(name) for name in account_names(app)}
    for row in db.query("SELECT job_id, last_seq FROM jobs"):
        expected = job_event_types(app, row["job_id"])
        rows = job_events(db, row["job_id"])
        assert [r["seq"] for r in rows] == list(range(1, len(expected) + 1))
        assert [r["type"] for r in rows] == expected
        assert row["last_seq"] == len(expected)


def test_lifecycle_views(app: Network, open_views: OpenViews) -> None:
    run_lifecycle(app)
    db = open_views()
    projector = Projector(app, db)
    assert projector.catch_up() == notification_count(app)
    assert projector.position() == notification_ids(app)[-1]

    job = job_row(db, "job-1")
    assert job["state"] == "SUCCEEDED"
    assert job["client_id"] == "alice"
    assert job["name"] == "train"
    assert job["provider_id"] == "prov-1"
    assert job["attempt"] == 1
    assert job["max_cost_micro"] == MAX_COST
    assert job["cost_micro"] == CHARGED
    assert job["reason"] == "outputs verified"  # the verdict says why it succeeded
    assert job["last_seq"] == len(JOB_EVENTS_SUCCESS)
    assert json.loads(job["spec"])["command"] == ["/bin/sh", "-c", "python train.py"]
    assert json.loads(job["outputs"])[0]["path"] == "out/model.bin"

    rows = job_events(db, "job-1")
    assert [r["seq"] for r in rows] == list(range(1, len(JOB_EVENTS_SUCCESS) + 1))
    assert [r["type"] for r in rows] == JOB_EVENTS_SUCCESS
    assert [r["type"] for r in rows] == job_event_types(app, "job-1")
    nids = [r["notification_id"] for r in rows]
    assert nids == sorted(nids)
    assert set(nids) <= set(notification_ids(app))
    aggregate_events = events_of(app, Job.create_id(job_id="job-1"))
    assert [r["at"] for r in rows] == [e.timestamp.isoformat() for e in aggregate_events]
    allocated = json.loads(rows[3]["data"])
    assert allocated["provider_id"] == "prov-1"
    assert allocated["gpu_indexes"] == [0]
    assert "spec" not in json.loads(rows[0]["data"])

    accounts = {r["name"]: r["balance_micro"] for r in db.query("SELECT * FROM accounts")}
    assert accounts == {name: app.balance(name) for name in account_names(app)}
    assert accounts["client:alice"] == START - CHARGED
    assert sum(accounts.values()) == 0

    prov = provider_row(db, "prov-1")
    assert prov["status"] == "online"
    assert prov["region"] == "eu-west"
    assert prov["price_micro"] == PRICE
    assert json.loads(prov["gpus"]) == [gpu(0)]
    assert json.loads(prov["reservations"]) == {}
    assert json.loads(prov["outcomes"]) == ["success"]
    assert prov["reputation"] == pytest.approx(2 / 3)
    assert prov["reputation"] == pytest.approx(app.provider("prov-1").reputation)

    assert projector.catch_up() == 0
    assert projector.run_once() == 0


def test_views_along_the_way(app: Network, open_views: OpenViews) -> None:
    db = open_views()
    projector = Projector(app, db)
    for name, command in lifecycle_commands(app):
        command()
        projector.catch_up()
        if name in ("open_client", "register_provider"):
            continue
        assert job_row(db, "job-1")["state"] == app.job("job-1").state, name
        if name == "allocate":
            prov = provider_row(db, "prov-1")
            assert json.loads(prov["reservations"]) == {"job-1": [0]}
            assert job_row(db, "job-1")["provider_id"] == "prov-1"
        if name == "release_gpus":
            assert json.loads(provider_row(db, "prov-1")["reservations"]) == {}
    assert_views_match_the_app(app, db)


def test_rejected_and_lost_jobs_in_the_views(app: Network, open_views: OpenViews) -> None:
    app.open_client("poor", 10)
    app.submit_job("job-poor", "poor", make_spec())
    app.admit_job("job-poor")
    app.open_client("alice", START)
    app.submit_job("job-1", "alice", make_spec())
    app.admit_job("job-1")
    app.register_provider("flaky", "eu", PRICE, [gpu(0)])
    app.allocate("job-1", 1, set(), {"flaky"})
    app.record_step("job-1", "execution_started", 1, step_data("execution_started", "flaky"))
    app.provider_lost("job-1", 1, "flaky", "gone")
    db = open_views()
    Projector(app, db).catch_up()

    poor = job_row(db, "job-poor")
    assert poor["state"] == "REJECTED"
    assert poor["reason"].startswith("insufficient balance")
    assert poor["cost_micro"] is None
    lost = job_row(db, "job-1")
    assert lost["state"] == "QUEUED"
    assert lost["provider_id"] is None
    flaky = provider_row(db, "flaky")
    assert flaky["status"] == "lost"
    assert json.loads(flaky["reservations"]) == {}
    assert json.loads(flaky["outcomes"]) == ["lost"]
    assert flaky["reputation"] == pytest.approx(reputation_score(["lost"]))
    assert_views_match_the_app(app, db)


def test_the_jobs_provider_stays_its_runs_through_checks_and_a_verifier(
    app: Network, open_views: OpenViews
) -> None:
    """job.providerId names the provider of the job's run (then the one whose result was
    accepted): a check run, a verifier run or the loss of one of them does not move it; the
    loss of the job's own run clears it until the run is placed again."""
    app.open_client("alice", START)
    app.submit_job("job-1", "alice", make_spec(verification={"verifier": "true"}))
    app.admit_job("job-1")
    online = {"prov-1", "prov-2", "prov-3", "prov-4"}
    for pid in sorted(online):
        app.register_provider(pid, "eu-west", PRICE, [gpu(0)])
    db = open_views()
    projector = Projector(app, db)

    def provider_shown() -> str | None:
        projector.catch_up()
        return job_row(db, "job-1")["provider_id"]

    first = app.allocate("job-1", 1, {"prov-2", "prov-3", "prov-4"}, online).provider_id
    assert first == "prov-1" and provider_shown() == "prov-1"
    app.provider_lost("job-1", 1, "prov-1", "gone")  # the job's own run: no provider now
    assert provider_shown() is None
    app.allocate("job-1", 2, {"prov-1", "prov-3", "prov-4"}, online)
    assert provider_shown() == "prov-2"
    for step in ("inputs_staged", "execution_started", "execution_finished", "outputs_uploaded"):
        app.record_step("job-1", step, 2, step_data(step, "prov-2"))
    app.release_gpus("job-1", "prov-2")
    app.allocate("job-1", 3, {"prov-1", "prov-4"}, online)  # the network's check run
    assert provider_shown() == "prov-2"
    app.provider_lost("job-1", 3, "prov-3", "gone")  # ... lost: the job's provider stays
    assert provider_shown() == "prov-2"
    app.record_verdict("job-1", True, True, "outputs verified", accepted_attempt=2)
    assert provider_shown() == "prov-2"
    app.allocate("job-1", 4, {"prov-1", "prov-3"}, online)  # the client's verifier
    assert provider_shown() == "prov-2"
    assert_views_match_the_app(app, db)


def test_every_job_event_type_has_a_state_rule() -> None:
    assert set(JOB_EVENTS_SUCCESS) <= set(STATE_AFTER)
    for etype in ("JobRejected", "ProviderLost", "VerificationFailed", "JobFailed"):
        assert etype in STATE_AFTER


@pytest.mark.parametrize("aggregate", [Job, Provider, Node, Account])
def test_every_event_class_of_a_viewed_aggregate_has_a_fold(aggregate: type[Aggregate]) -> None:
    """The views dispatch on the event's class: a new event of Job, Provider, Node or
    Account must get a handler (even one that only appends to its history)."""
    declared = [cls for name, cls in vars(aggregate).items()
                if isinstance(cls, type) and issubclass(cls, Aggregate.Event)
                and name not in ("Event", "Created")]
    assert declared
    assert [cls.__name__ for cls in declared if cls not in HANDLERS] == []


def test_rebuild_gives_identical_views(app: Network, open_views: OpenViews) -> None:
    run_lifecycle(app, Names("job-a", "alice", "prov-a"))
    run_lifecycle(app, Names("job-b", "bob", "prov-b"), succeed=False)
    db = open_views()
    projector = Projector(app, db)
    total = projector.catch_up()
    assert total == notification_count(app)
    before = snapshot(db)
    assert {"tracking", "jobs", "job_events", "providers", "accounts"} <= set(before)
    assert len(before["jobs"]) == 2
    assert len(before["job_events"]) == 26  # 11 + 2 each (ReputationRecorded, GpusReleased)
    assert len(before["providers"]) == 2
    assert projector.rebuild() == total
    assert snapshot(db) == before
    assert projector.catch_up() == 0


@pytest.mark.parametrize("batch_size", [7, 2000])
def test_views_do_not_depend_on_how_events_are_batched(
    app: Network, open_views: OpenViews, batch_size: int
) -> None:
    """A batch keeps the rows it read and writes each changed row once (readmodel/projector.py
    _Rows); one event per batch reads and writes every time. Both fold to the same views."""
    run_lifecycle(app, Names("job-a", "alice", "prov-a"))
    run_lifecycle(app, Names("job-b", "bob", "prov-b"), succeed=False)
    run_lifecycle(app, Names("job-c", "alice", "prov-a"))
    db = open_views()
    assert Projector(app, db, batch_size=1).catch_up() == notification_count(app)
    one_by_one = snapshot(db)
    assert Projector(app, db, batch_size=batch_size).rebuild() == notification_count(app)
    assert snapshot(db) == one_by_one


def test_projection_resumes_where_it_stopped(app: Network, open_views: OpenViews) -> None:
    commands = lifecycle_commands(app)
    db = open_views()
    for _, command in commands[:6]:
        command()
    first = Projector(app, db, batch_size=3)
    applied = first.catch_up()
    for _, command in commands[6:]:
        command()
    second = Projector(app, db, batch_size=3)  # a restarted process, same views
    assert second.position() == notification_ids(app)[applied - 1]
    assert applied + second.catch_up() == notification_count(app)
    assert_views_match_the_app(app, db)


def test_two_projectors_alternating_never_apply_an_event_twice(
    app: Network, open_views: OpenViews
) -> None:
    run_lifecycle(app, Names("job-a", "alice", "prov-a"))
    run_lifecycle(app, Names("job-b", "bob", "prov-b"), succeed=False)
    one, two = (
        Projector(app, open_views(), batch_size=4),
        Projector(app, open_views(), batch_size=4),
    )
    total = 0
    for _ in range(100):
        a, b = one.run_once(), two.run_once()
        total += a + b
        if a == b == 0:
            break
    assert total == notification_count(app)
    db = open_views()
    assert_views_match_the_app(app, db)


class StaleProjector(Projector):
    """Reads its start position, then lets a rival project a batch before it goes on."""

    rival: Projector | None = None

    def position(self) -> int:
        start = super().position()
        if self.rival is not None:
            rival, self.rival = self.rival, None
            assert rival.run_once() > 0
        return start


def test_a_projector_with_a_stale_position_applies_nothing(
    app: Network, open_views: OpenViews
) -> None:
    run_lifecycle(app)
    stale = StaleProjector(app, open_views(), batch_size=5)
    rival = Projector(app, open_views(), batch_size=5)
    stale.rival = rival
    assert stale.run_once() == 0  # the rival moved the position first; its batch wins
    assert rival.position() == notification_ids(app)[4]
    assert stale.catch_up() + 5 == notification_count(app)
    assert_views_match_the_app(app, open_views())


def test_racing_projectors_in_threads(app: Network, open_views: OpenViews) -> None:
    for n in range(3):
        run_lifecycle(app, Names(f"job-{n}", f"client-{n}", f"prov-{n}"), succeed=n != 1)
    total, last = notification_count(app), notification_ids(app)[-1]
    projectors = [Projector(app, open_views(), batch_size=2) for _ in range(4)]
    barrier = threading.Barrier(len(projectors))
    applied = [0] * len(projectors)

    def run(n: int) -> None:
        barrier.wait()
        while projectors[n].position() < last:
            applied[n] += projectors[n].run_once()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(projectors))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert sum(applied) == total
    assert_views_match_the_app(app, open_views())


def test_projectors_starting_together(
    request: pytest.FixtureRequest, settings: Settings, app: Network, open_views: OpenViews
) -> None:
    """Several processes start their projection on fresh views at the same moment."""
    run_lifecycle(app)
    dbs = [open_views() for _ in range(6)]
    for _attempt in range(5):
        with dbs[0].transaction() as cur:  # no tracking row yet, as on fresh views
            cur.execute("DELETE FROM tracking")
        assert start_projectors_together(app, dbs) == []
        assert projected_position(dbs[0]) == 0


def start_projectors_together(app: Network, dbs: list[ViewDB]) -> list[str]:
    """Construct one Projector per views connection, all at once; returns the errors."""
    barrier = threading.Barrier(len(dbs))
    errors: list[str] = []

    def start(db: ViewDB) -> None:
        barrier.wait()
        try:
            Projector(app, db)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=start, args=(db,)) for db in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return errors


def projected_position(db: ViewDB) -> int:
    (row,) = db.query("SELECT position FROM tracking WHERE name = 'views'")
    return int(row["position"])


def test_any_accepted_spec_can_be_projected(app: Network, open_views: OpenViews) -> None:
    app.open_client("alice", START)
    huge = make_spec(resources={"gpus": 64}, timeout="7d", max_price_per_gpu_hour="1000000")
    app.submit_job("job-huge", "alice", huge)
    app.admit_job("job-huge")  # rejected: insufficient balance, as it should be
    run_lifecycle(app, Names("job-1", "alice", "prov-1"))
    db = open_views()
    with contextlib.suppress(Exception):  # what users see is what matters: the views
        Projector(app, db).catch_up()
    assert db.query("SELECT state FROM jobs WHERE job_id = ?", ("job-1",)) == [
        {"state": "SUCCEEDED"}
    ]
    assert job_row(db, "job-huge")["state"] == "REJECTED"


def test_an_event_the_views_cannot_hold_is_set_aside_and_the_others_go_on(
    app: Network, open_views: OpenViews, caplog: pytest.LogCaptureFixture
) -> None:
    """A price of 10^24 written straight into the log (past the domain's bounds, as a bug or
    an old version might): the projection sets it aside, says so, and shows what came after,
    another tenant's events and the same provider's later ones alike."""
    db = open_views()
    projector = Projector(app, db)
    app.register_provider("p-bad", "eu", PRICE, [gpu(0)])
    bad = app.provider("p-bad")
    bad._price_changed(price_per_gpu_hour_micro=10**24)  # the @event body: no check
    app.save(bad)
    bad_id = app.recorder.max_notification_id()
    app.register_provider("p-good", "eu", PRICE, [gpu(0)])
    app.deposit("bob", 5_000_000, "d1")
    with caplog.at_level("ERROR", logger="readmodel.projector"):
        projector.catch_up()
    app.set_price("p-bad", PRICE + 1)
    projector.catch_up()
    assert projector.position() == app.recorder.max_notification_id()
    (aside,) = db.query("SELECT * FROM projection_set_aside")
    assert aside["notification_id"] == bad_id
    assert aside["topic"].endswith("Provider.PriceChanged")
    assert "OverflowError" in aside["error"] or "out of range" in aside["error"]
    assert any(f"event {bad_id}" in r.getMessage() for r in caplog.records)
    assert provider_row(db, "p-good")["price_micro"] == PRICE
    assert provider_row(db, "p-bad")["price_micro"] == PRICE + 1
    assert db.query("SELECT balance_micro FROM accounts WHERE name = 'client:bob'") == [
        {"balance_micro": 5_000_000}
    ]


def test_a_providers_sandbox_is_recorded_and_shown(app: Network, open_views: OpenViews) -> None:
    app.register_provider("p-safe", "eu", PRICE, [gpu(0)], sandbox="bwrap")
    app.register_provider("p-bare", "eu", PRICE, [gpu(0)], sandbox="bwrap")
    app.register_provider("p-bare", "eu", PRICE, [gpu(0)], sandbox="none")  # restarted unsafe
    app.register_provider("p-bare", "eu", PRICE, [gpu(0)], sandbox="none")  # no change: no event
    app.register_provider("p-old", "eu", PRICE, [gpu(0)])  # an agent that does not say
    with pytest.raises(DomainError, match="sandbox"):
        app.register_provider("p-odd", "eu", PRICE, [gpu(0)], sandbox="chroot")
    db = open_views()

    Projector(app, db).catch_up()

    shown = {p: provider_row(db, p)["sandbox"] for p in ("p-safe", "p-bare", "p-old")}
    assert shown == {"p-safe": "bwrap", "p-bare": "none", "p-old": ""}
    declared = [e for e in db.query("SELECT type FROM provider_events WHERE provider_id = ?",
                                    ("p-bare",)) if e["type"] == "SandboxDeclared"]  # fmt: skip
    assert len(declared) == 2
