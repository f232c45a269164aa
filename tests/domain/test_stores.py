"""Where each store keeps the events and the views (a PostgreSQL schema, a SQLite file)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from domain.application import Network
from infra.settings import Settings
from readmodel.projector import Projector
from readmodel.schema import ViewDB
from tests.domain.support import notification_count, run_lifecycle
from tests.support.stores import store_settings

VIEW_TABLES = {"tracking", "jobs", "job_events", "providers", "accounts", "provider_liveness"}


@pytest.fixture
def pg(pg_settings: Settings) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_settings.postgres_conninfo(), autocommit=True) as conn:
        yield conn


def tables_in(conn: psycopg.Connection, schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
    ).fetchall()
    return {r[0] for r in rows}


def test_settings_pass_the_schema_to_eventsourcing(pg_settings: Settings) -> None:
    env = pg_settings.eventsourcing_env()
    assert env["PERSISTENCE_MODULE"] == "eventsourcing.postgres"
    assert env["POSTGRES_SCHEMA"] == pg_settings.pg_schema
    assert env["POSTGRES_DBNAME"] == pg_settings.pg_dbname
    without = Settings(event_store="postgres", pg_schema="").eventsourcing_env()
    assert "POSTGRES_SCHEMA" not in without


def test_events_land_in_the_existing_schema(pg_settings: Settings, pg: psycopg.Connection) -> None:
    schema = pg_settings.pg_schema
    app = Network(env=pg_settings.eventsourcing_env())
    try:
        run_lifecycle(app)
        count = notification_count(app)
    finally:
        app.close()
    assert "gpgpu_events" in tables_in(pg, schema)
    (stored,) = pg.execute(
        sql.SQL("SELECT count(*) FROM {}.gpgpu_events").format(sql.Identifier(schema))
    ).fetchone() or (None,)
    assert stored == count > 0
    # A new application over the same schema sees the same log.
    again = Network(env=pg_settings.eventsourcing_env())
    try:
        assert notification_count(again) == count
        assert again.job("job-1").state == "SUCCEEDED"
    finally:
        again.close()


def test_views_use_the_schema_through_search_path(
    pg_settings: Settings, pg: psycopg.Connection
) -> None:
    schema = pg_settings.pg_schema
    db = ViewDB(pg_settings)
    try:
        assert db.query("SHOW search_path") == [{"search_path": schema}]
        assert db.query("SELECT current_schema() AS s") == [{"s": schema}]
        assert tables_in(pg, schema) >= VIEW_TABLES
        app = Network(env=pg_settings.eventsourcing_env())
        try:
            run_lifecycle(app)
            Projector(app, db).catch_up()
        finally:
            app.close()
        (count,) = pg.execute(
            sql.SQL("SELECT count(*) FROM {}.jobs").format(sql.Identifier(schema))
        ).fetchone() or (None,)
        assert count == 1
    finally:
        db.close()


def test_two_schemas_do_not_see_each_other(
    pg_settings: Settings, pg: psycopg.Connection, tmp_path: Path
) -> None:
    with store_settings("postgres", tmp_path / "other") as other:
        assert other.pg_schema != pg_settings.pg_schema
        first = Network(env=pg_settings.eventsourcing_env())
        second = Network(env=other.eventsourcing_env())
        try:
            first.open_client("alice", 5)
            assert notification_count(second) == 0
            assert second.balance("client:alice") == 0
            assert first.balance("client:alice") == 5
        finally:
            first.close()
            second.close()


def test_sqlite_files_live_under_home(sqlite_settings: Settings) -> None:
    env = sqlite_settings.eventsourcing_env()
    assert env["SQLITE_DBNAME"] == str(sqlite_settings.home / "events.db")
    app = Network(env=env)
    db = ViewDB(sqlite_settings)
    try:
        app.open_client("alice", 5)
        Projector(app, db).catch_up()
        assert (sqlite_settings.home / "events.db").stat().st_size > 0
        assert (sqlite_settings.home / "views.db").exists()
        assert db.query("SELECT balance_micro FROM accounts WHERE name = 'client:alice'") == [
            {"balance_micro": 5}
        ]
    finally:
        db.close()
        app.close()
    # Reopened from the files: the same log.
    reopened = Network(env=sqlite_settings.eventsourcing_env())
    try:
        assert reopened.balance("client:alice") == 5
    finally:
        reopened.close()


def test_memory_store_keeps_nothing(tmp_path: Path) -> None:
    settings = Settings(event_store="memory", home=tmp_path)
    assert settings.eventsourcing_env()["PERSISTENCE_MODULE"] == "eventsourcing.popo"
    app = Network(env=settings.eventsourcing_env())
    app.open_client("alice", 5)
    app.close()
    assert Network(env=settings.eventsourcing_env()).balance("client:alice") == 0
    assert list(tmp_path.iterdir()) == []
