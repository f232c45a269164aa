"""The projection's idle check: has anyone committed events since it last asked?

SQLite answers from `PRAGMA data_version`; PostgreSQL from a trigger's NOTIFY, heard on a
LISTEN connection. Either way another process's commit shows, and nothing else does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from domain.application import Network
from infra.db import PostgresChanges, SqliteChanges
from infra.settings import Settings
from tests.support.stores import store_settings


@pytest.fixture(params=("sqlite", "postgres"))  # the memory store is one process's
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    with store_settings(request.param, tmp_path) as s:
        yield s


@pytest.fixture
def changes(settings: Settings) -> Iterator[Callable[[], bool]]:
    first = Network(env=settings.eventsourcing_env())  # makes the events table
    watch: SqliteChanges | PostgresChanges
    if settings.event_store == "sqlite":
        watch = SqliteChanges(settings.events_path)
    else:
        watch = PostgresChanges(settings, first.recorder.events_table_name)  # type: ignore[attr-defined]
    first.close()
    try:
        yield watch
    finally:
        watch.close()


SETTLE_S = 2.0  # far past a NOTIFY's way to a local listener, even under load


def shows_within(changes: Callable[[], bool], seconds: float) -> bool:
    """A NOTIFY arrives a moment after the commit: ask until it shows, or give up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if changes():
            return True
        time.sleep(0.01)
    return False


def test_another_process_commit_shows_once(
    changes: Callable[[], bool], open_app: Callable[[], Network]
) -> None:
    changes()  # whatever it knew at the start
    assert not changes()
    other = open_app()  # as the control worker would write
    assert not shows_within(changes, 0.2)  # opening a store commits nothing
    other.open_client("watched", 10**6)
    assert shows_within(changes, 5)
    assert not changes()
    for n in range(3):  # several commits between two looks: one answer
        other.open_client(f"watched-{n}", 10**6)
    # Each commit's NOTIFY reaches the listening socket a moment after it (on a loaded
    # machine, the three may straddle a look, and a later look then answers again for a
    # commit it already reported: harmless, one more poll of the event log, but not what
    # this checks). Let all three arrive, then one look answers for them all.
    time.sleep(SETTLE_S)
    assert changes()
    assert not shows_within(changes, 0.2)


def test_every_replica_installs_the_trigger_and_each_hears(pg_settings: Settings) -> None:
    app = Network(env=pg_settings.eventsourcing_env())
    table = app.recorder.events_table_name  # type: ignore[attr-defined]
    first, second = PostgresChanges(pg_settings, table), PostgresChanges(pg_settings, table)
    try:
        app.open_client("both", 10**6)
        assert shows_within(first, 5) and shows_within(second, 5)
    finally:
        first.close()
        second.close()
        app.close()
