"""The read-model database: SQLite (a file under home) or PostgreSQL, one SQL dialect.

Queries are written with '?' placeholders and translated for psycopg. Each
process opens its own connection; SQLite runs in WAL mode so readers never
block the projection's writer.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from infra.settings import Settings

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS tracking (
        name TEXT PRIMARY KEY, position BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL UNIQUE, client_id TEXT NOT NULL,
        name TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
        provider_id TEXT, attempt INTEGER NOT NULL DEFAULT 0,
        max_cost_micro BIGINT NOT NULL, cost_micro BIGINT,
        submitted_at TEXT NOT NULL, updated_at TEXT NOT NULL, queued_position BIGINT,
        outputs TEXT NOT NULL DEFAULT '[]', spec TEXT NOT NULL, last_seq INTEGER NOT NULL,
        queue TEXT NOT NULL DEFAULT 'local/default')""",
    "CREATE INDEX IF NOT EXISTS jobs_client ON jobs (client_id, submitted_at)",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, queued_position)",
    """CREATE TABLE IF NOT EXISTS job_events (
        job_id TEXT NOT NULL, seq INTEGER NOT NULL, notification_id BIGINT NOT NULL,
        type TEXT NOT NULL, at TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (job_id, seq))""",
    """CREATE TABLE IF NOT EXISTS providers (
        provider_id TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL UNIQUE, region TEXT NOT NULL,
        status TEXT NOT NULL, price_micro BIGINT NOT NULL, gpus TEXT NOT NULL,
        reservations TEXT NOT NULL DEFAULT '{}', outcomes TEXT NOT NULL DEFAULT '[]',
        reputation DOUBLE PRECISION NOT NULL, updated_at TEXT NOT NULL,
        runtimes TEXT NOT NULL DEFAULT '["process"]', last_seq INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS provider_events (
        provider_id TEXT NOT NULL, seq INTEGER NOT NULL, notification_id BIGINT NOT NULL,
        type TEXT NOT NULL, at TEXT NOT NULL, data TEXT NOT NULL,
        PRIMARY KEY (provider_id, seq))""",
    """CREATE TABLE IF NOT EXISTS nodes (
        node_id TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL UNIQUE, region TEXT NOT NULL,
        operator TEXT NOT NULL, queues TEXT NOT NULL DEFAULT '{}',
        provider_ids TEXT NOT NULL DEFAULT '[]')""",
    """CREATE TABLE IF NOT EXISTS accounts (
        name TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL UNIQUE, balance_micro BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS ledger_entries (
        account TEXT NOT NULL, seq INTEGER NOT NULL, transfer_id TEXT NOT NULL,
        amount_micro BIGINT NOT NULL, balance_micro BIGINT NOT NULL, counterparty TEXT NOT NULL,
        kind TEXT NOT NULL, memo TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (account, seq))""",
    """CREATE TABLE IF NOT EXISTS provider_liveness (
        provider_id TEXT PRIMARY KEY, last_heartbeat_at DOUBLE PRECISION NOT NULL,
        telemetry TEXT NOT NULL DEFAULT '[]')""",
]


# The read models proper: derived from the log, dropped and rebuilt when their shape changes.
VIEW_TABLES = (
    "jobs", "job_events", "providers", "provider_events", "accounts", "ledger_entries", "nodes"
)


class ViewDB:
    """One connection to the read-model database, serialised by a lock."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.is_postgres = settings.event_store == "postgres"
        self._lock = threading.RLock()
        self._conn: Any = self._connect()
        with self.transaction() as cur:
            for statement in SCHEMA:
                cur.execute(statement)

    def _connect(self) -> Any:  # a psycopg or sqlite3 connection
        if self.is_postgres:
            import psycopg

            conn = psycopg.connect(self.settings.postgres_conninfo(), autocommit=False)
            if self.settings.pg_schema:
                conn.execute(f"SET search_path TO {self.settings.pg_schema}")
                conn.commit()
            return conn
        path = (
            ":memory:" if self.settings.event_store == "memory" else str(self.settings.views_path)
        )
        if path != ":memory:":
            self.settings.home.mkdir(parents=True, exist_ok=True)
        lite = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        lite.execute("PRAGMA journal_mode=WAL")
        lite.execute("PRAGMA synchronous=NORMAL")
        return lite

    def reset_views(self) -> None:
        """Drop and recreate every read-model table (their tracking is the caller's)."""
        with self.transaction() as cur:
            for table in VIEW_TABLES:
                cur.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in SCHEMA:
                cur.execute(statement)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.is_postgres else sql

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            if not self.is_postgres:
                cur.execute("BEGIN IMMEDIATE")
            try:
                yield Cursor(self, cur)
            except BaseException:
                self._conn.rollback()
                raise
            else:
                self._conn.commit()
            finally:
                cur.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute(self._sql(sql), tuple(params))
                cols = [d[0] for d in cur.description]
                rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
            finally:
                cur.close()
            if self.is_postgres:
                self._conn.commit()  # end the read transaction; never sit idle in one
            return rows

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class Cursor:
    def __init__(self, db: ViewDB, cur: Any):
        self._db, self._cur = db, cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cur.execute(self._db._sql(sql), tuple(params))
        return int(self._cur.rowcount)

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        self._cur.execute(self._db._sql(sql), tuple(params))
        row = self._cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in self._cur.description], row, strict=True))


def online_provider_ids(views: ViewDB, settings: Settings) -> set[str]:
    """Providers whose last heartbeat is recent enough to give them work."""
    cutoff = time.time() - settings.provider_offline_after_s
    rows = views.query(
        "SELECT provider_id FROM provider_liveness WHERE last_heartbeat_at >= ?", (cutoff,)
    )
    return {r["provider_id"] for r in rows}
