"""Rebuilding the read model: the projector reads stored events from their JSON and, on
PostgreSQL, appends histories and ledger entries with COPY. The views it folds are row for
row the ones the mapper's domain events and plain INSERTs give, on every store."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import Notification, StoredEvent

from domain.application import Network
from infra.settings import Settings
from readmodel.decoding import Event, event_data, stored_event
from readmodel.folding import HANDLERS, Fold
from readmodel.projector import NAME, Projector
from readmodel.schema import VIEW_TABLES, ViewDB
from tests.domain.support import (
    H100,
    PRICE,
    Names,
    gpu,
    lifecycle_commands,
    make_spec,
    run_lifecycle,
)

# Text the views keep as it was said: COPY's text format escapes these.
AWKWARD = "tab\there, new\nline, back\\slash, \\N, ünïcode, \"quotes\", \r\n"


@pytest.fixture
def db(settings: Settings) -> Iterator[ViewDB]:
    views = ViewDB(settings)
    try:
        yield views
    finally:
        views.close()


def varied_history(app: Network) -> None:
    """Every view table in use: jobs that succeed, fail verification, are rejected and lose
    their provider; a node and its queues; a provider's GPUs suspended, degraded and back;
    text that COPY must escape, in histories and ledger memos."""
    run_lifecycle(app, Names("job-a", "alice", "prov-a"))
    run_lifecycle(app, Names("job-b", "bob", "prov-b"), succeed=False)
    for _, command in lifecycle_commands(app, Names("job-c", "alice", "prov-a"))[1:5]:
        command()  # submitted, admitted, allocated on prov-a again
    app.provider_lost("job-c", 1, "prov-a", AWKWARD)
    app.open_client("carol", 1)
    app.submit_job("job-huge", "carol", make_spec(resources={"gpus": 8}))
    app.admit_job("job-huge")  # rejected: the balance is short
    app.grant("carol", 5_000, "grant-1", AWKWARD)
    app.register_node("node-1", "eu-west", "ops")
    app.configure_queue("node-1", "fast", [H100], 3, 2, False)
    app.register_provider("prov-n", "eu-west", PRICE, [gpu(0), gpu(1)], node_id="node-1")
    app.suspend_gpu("prov-n", 1)
    app.report_gpu_health("prov-n", 0, False, AWKWARD)
    app.report_gpu_health("prov-n", 0, True, "")
    app.resume_gpu("prov-n", 1)
    app.set_price("prov-n", PRICE + 1)
    app.provider_offline("prov-n", AWKWARD)
    app.provider_online("prov-n")


def notifications(app: Network) -> list[Notification]:
    return list(app.recorder.select_notifications(start=None, limit=1_000_000))


def snapshot(db: ViewDB) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every view table, and the projection's position, in a stable order."""
    tables = {
        table: sorted((tuple(r.items()) for r in db.query(f"SELECT * FROM {table}")), key=repr)
        for table in VIEW_TABLES
    }
    return {**tables, "tracking": db.query("SELECT * FROM tracking ORDER BY name")}


def fold_through_the_mapper(app: Network, db: ViewDB) -> None:
    """The views as the projector folded them before it read events from their JSON and
    appended rows with COPY: each event made by the mapper, each row appended by an INSERT,
    one event per transaction."""
    for n in notifications(app):
        with db.transaction() as cur:
            fold = Fold(cur)
            fold.apply(n.id, app.mapper.to_domain_event(n))
            fold.write_changes()
            for (table, columns), rows in fold.rows.appends.items():
                marks = ", ".join("?" for _ in columns)
                for row in rows:
                    cur.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                                row)
            cur.execute("UPDATE tracking SET position = ? WHERE name = ?", (n.id, NAME))


def test_a_rebuild_gives_the_views_the_mapper_and_inserts_give(
    app: Network, db: ViewDB, caplog: pytest.LogCaptureFixture
) -> None:
    varied_history(app)
    projector = Projector(app, db)
    fold_through_the_mapper(app, db)
    reference = snapshot(db)
    assert {len(reference[t]) > 0 for t in VIEW_TABLES if t != "projection_set_aside"} == {True}
    with caplog.at_level("WARNING", logger="readmodel.projector"):
        assert projector.rebuild() == len(notifications(app))
    # Folded as one batch: not one event at a time after the batch failed.
    assert [r.getMessage() for r in caplog.records] == []
    assert snapshot(db) == reference
    # Batches of one event: each row read back and written every time.
    assert Projector(app, db, batch_size=1).rebuild() == len(notifications(app))
    assert snapshot(db) == reference


def test_incremental_projection_and_a_rebuild_agree(
    app: Network, db: ViewDB, caplog: pytest.LogCaptureFixture
) -> None:
    """Events projected as they come, in small batches between commands, then rebuilt."""
    commands = lifecycle_commands(app, Names("job-a", "alice", "prov-a"))
    projector = Projector(app, db, batch_size=3)
    for _, command in commands:
        command()
        projector.catch_up()
    varied_history(app)
    projector.catch_up()
    incremental = snapshot(db)
    with caplog.at_level("WARNING", logger="readmodel.projector"):
        assert Projector(app, db).rebuild() == len(notifications(app))
    assert [r.getMessage() for r in caplog.records] == []
    assert snapshot(db) == incremental


def mapper_event(app: Network, n: Notification) -> Event:
    event = app.mapper.to_domain_event(n)
    return Event(n.id, str(event.originator_id), type(event).__name__,
                 event.timestamp.isoformat(), event_data(event))


def altered(n: Notification, change: Any) -> Notification:
    state = json.loads(n.state)
    change(state)
    return dataclasses.replace(n, state=json.dumps(state, separators=(",", ":")).encode())


def test_stored_events_read_as_the_mapper_reads_them(app: Network) -> None:
    """Every event a view shows reads from its JSON as the mapper's domain event gives it;
    what the JSON alone cannot give the same (a transcoded value other than a UUID, one
    nested, an older class version) is left to the mapper."""
    varied_history(app)
    shown = [n for n in notifications(app)
             if type(app.mapper.to_domain_event(n)) in HANDLERS]
    assert len(shown) > 50
    for n in shown:
        cls = type(app.mapper.to_domain_event(n))
        assert stored_event(n, cls.__name__, getattr(cls, "class_version", 1)) == \
            mapper_event(app, n), n.topic

    job_queued = next(n for n in shown if n.topic.endswith("Job.JobQueued"))
    an_id = uuid4()
    with_uuid = altered(job_queued, lambda s: s.update(
        extra={"_type_": "uuid_hex", "_data_": an_id.hex}))
    read = stored_event(with_uuid, "JobQueued", 1)
    assert read == mapper_event(app, with_uuid)
    assert read is not None and read.data["extra"] == str(an_id)

    entry = next(n for n in shown if n.topic.endswith("Account.EntryPosted"))
    for n, name, version in (
        (altered(job_queued, lambda s: s.update(extra=[{"_type_": "uuid_hex",
                                                        "_data_": an_id.hex}])), "JobQueued", 1),
        (altered(job_queued, lambda s: s.update(extra={"_type_": "decimal_str",
                                                       "_data_": "1.5"})), "JobQueued", 1),
        (altered(job_queued, lambda s: s.update(_type_="a key like a transcoding's")),
         "JobQueued", 1),
        (altered(entry, lambda s: s.update(class_version=1)), "EntryPosted", 2),  # upcast
    ):
        assert stored_event(n, name, version) is None
        mapper_event(app, n)  # the mapper reads each

    # A string that reads like a transcoding's key is data (JSON escapes its quotes).
    said = altered(job_queued, lambda s: s.update(reason='"_type_"'))
    read = stored_event(said, "JobQueued", 1)
    assert read == mapper_event(app, said)
    assert read is not None and read.data["reason"] == '"_type_"'


def test_an_event_that_cannot_be_read_is_set_aside(app: Network, db: ViewDB) -> None:
    """Bytes that are not JSON, and a topic that names no class: the mapper fails on each,
    inside the batch, so each is set aside and the events around them are applied."""
    app.open_client("alice", 1_000)
    job_queued = "domain.job:Job.JobQueued"
    app.recorder.insert_events([
        StoredEvent(originator_id=uuid4(), originator_version=1, topic=job_queued,
                    state=b'{"timestamp": not json'),
        StoredEvent(originator_id=uuid4(), originator_version=1, topic="domain.job:Job.Gone",
                    state=b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-01-01"}}'),
    ])
    app.open_client("bob", 2_000)
    projector = Projector(app, db)
    assert projector.catch_up() == len(notifications(app))
    aside = db.query("SELECT topic FROM projection_set_aside ORDER BY notification_id")
    assert [r["topic"] for r in aside] == [job_queued, "domain.job:Job.Gone"]
    balances = db.query("SELECT name, balance_micro FROM accounts WHERE name LIKE ?"
                        " ORDER BY name", ("client:%",))
    assert balances == [{"name": "client:alice", "balance_micro": 1_000},
                        {"name": "client:bob", "balance_micro": 2_000}]
