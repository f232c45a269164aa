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
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
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
        queue TEXT NOT NULL DEFAULT 'local/default', priority INTEGER NOT NULL DEFAULT 0,
        gpus INTEGER NOT NULL DEFAULT 1, timeout_s BIGINT NOT NULL DEFAULT 0,
        allocated_at TEXT)""",
    "CREATE INDEX IF NOT EXISTS jobs_client ON jobs (client_id, submitted_at)",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, queued_position)",
    "CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (queue, state)",
    """CREATE TABLE IF NOT EXISTS job_events (
        job_id TEXT NOT NULL, seq INTEGER NOT NULL, notification_id BIGINT NOT NULL,
        type TEXT NOT NULL, at TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (job_id, seq))""",
    """CREATE TABLE IF NOT EXISTS providers (
        provider_id TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL UNIQUE, region TEXT NOT NULL,
        status TEXT NOT NULL, price_micro BIGINT NOT NULL, gpus TEXT NOT NULL,
        reservations TEXT NOT NULL DEFAULT '{}', outcomes TEXT NOT NULL DEFAULT '[]',
        outcome_times TEXT NOT NULL DEFAULT '[]',
        reputation DOUBLE PRECISION NOT NULL, updated_at TEXT NOT NULL,
        runtimes TEXT NOT NULL DEFAULT '["process"]', last_seq INTEGER NOT NULL DEFAULT 0,
        status_reason TEXT NOT NULL DEFAULT '', reservation_clients TEXT NOT NULL DEFAULT '{}',
        suspended TEXT NOT NULL DEFAULT '[]', degraded TEXT NOT NULL DEFAULT '{}',
        sandbox TEXT NOT NULL DEFAULT '')""",
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
    # Events the projection could not apply (domain/projection.py), so the others go on.
    """CREATE TABLE IF NOT EXISTS projection_set_aside (
        notification_id BIGINT PRIMARY KEY, topic TEXT NOT NULL, error TEXT NOT NULL)""",
    # Not read models: heartbeats are samples, not events (infra/telemetry.py). The liveness
    # row holds a provider's last heartbeat and how many it sent; provider_samples is a ring
    # of its last `provider_samples_kept` heartbeats' GPU readings (slot = beat number mod N).
    """CREATE TABLE IF NOT EXISTS provider_liveness (
        provider_id TEXT PRIMARY KEY, last_heartbeat_at DOUBLE PRECISION NOT NULL,
        telemetry TEXT NOT NULL DEFAULT '[]', beats BIGINT NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS provider_samples (
        provider_id TEXT NOT NULL, slot INTEGER NOT NULL, gpu_index INTEGER NOT NULL,
        at DOUBLE PRECISION NOT NULL, utilization_pct INTEGER, memory_used_mb BIGINT,
        temperature_c INTEGER, power_w DOUBLE PRECISION, ecc_errors BIGINT, xid_errors BIGINT,
        PRIMARY KEY (provider_id, slot, gpu_index))""",
    # Not a read model either: wrong passwords per email, for every API process
    # (api/auth.py SignInThrottle); rows leave once they are older than the window.
    """CREATE TABLE IF NOT EXISTS sign_in_failures (
        email TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, source TEXT NOT NULL DEFAULT '')""",
    "CREATE INDEX IF NOT EXISTS sign_in_failures_email ON sign_in_failures (email, at)",
    # Not a read model: the GPU steps handed to providers (infra/assignments.py). The task
    # token lets the control plane complete the step's activity; it never leaves this table.
    """CREATE TABLE IF NOT EXISTS assignments (
        assignment_id TEXT PRIMARY KEY, provider_id TEXT NOT NULL, kind TEXT NOT NULL,
        request TEXT NOT NULL, task_token TEXT NOT NULL, workflow_id TEXT NOT NULL,
        run_id TEXT NOT NULL, activity_id TEXT NOT NULL, attempt INTEGER NOT NULL,
        gpus INTEGER NOT NULL DEFAULT 0, heartbeat_timeout_s DOUBLE PRECISION NOT NULL,
        pickup_by DOUBLE PRECISION NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        handed_out_at DOUBLE PRECISION, last_seen_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION, outcome TEXT NOT NULL DEFAULT '',
        trace TEXT NOT NULL DEFAULT '{}', UNIQUE (workflow_id, run_id, activity_id))""",
    "CREATE INDEX IF NOT EXISTS assignments_open ON assignments (finished_at, provider_id)",
]

# Columns added to tables that are not rebuilt from the log: (table, column, declaration).
COLUMNS_ADDED = [("provider_liveness", "beats", "BIGINT NOT NULL DEFAULT 0"),
                 ("sign_in_failures", "source", "TEXT NOT NULL DEFAULT ''"),
                 ("assignments", "trace", "TEXT NOT NULL DEFAULT '{}'")]

# The read models proper: derived from the log, dropped and rebuilt when their shape changes.
VIEW_TABLES = (
    "jobs", "job_events", "providers", "provider_events", "accounts", "ledger_entries", "nodes",
    "projection_set_aside",
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
            self._add_columns(cur)

    def _add_columns(self, cur: Cursor) -> None:
        for table, column, declaration in COLUMNS_ADDED:
            if self.is_postgres:
                have = cur.all(
                    "SELECT column_name AS name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = ?", (table,)
                )
            else:
                have = cur.all(f"SELECT name FROM pragma_table_info('{table}')")
            if column not in {r["name"] for r in have}:
                exists = "IF NOT EXISTS " if self.is_postgres else ""
                cur.execute(f"ALTER TABLE {table} ADD COLUMN {exists}{column} {declaration}")

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

    def pipeline(self) -> AbstractContextManager[Any]:
        """Inside a transaction: PostgreSQL sends the statements without waiting for each
        answer (a read still waits, for everything before it); SQLite: nothing changes."""
        return self._conn.pipeline() if self.is_postgres else nullcontext()

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
        self.is_postgres = db.is_postgres

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cur.execute(self._db._sql(sql), tuple(params))
        return int(self._cur.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cur.executemany(self._db._sql(sql), [tuple(r) for r in rows])

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        self._cur.execute(self._db._sql(sql), tuple(params))
        row = self._cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in self._cur.description], row, strict=True))

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self._cur.execute(self._db._sql(sql), tuple(params))
        cols = [d[0] for d in self._cur.description]
        return [dict(zip(cols, r, strict=True)) for r in self._cur.fetchall()]


def online_provider_ids(views: ViewDB, settings: Settings) -> set[str]:
    """Providers whose last heartbeat is recent enough to give them work.

    The same rule as the liveness monitor's (infra/telemetry.py): silent for longer than
    `settings.offline_after_s` (a few missed heartbeats, not one late one) is offline.
    """
    cutoff = time.time() - settings.offline_after_s
    rows = views.query(
        "SELECT provider_id FROM provider_liveness WHERE last_heartbeat_at >= ?", (cutoff,)
    )
    return {r["provider_id"] for r in rows}


class SqliteChanges:
    """Says whether anyone committed to a SQLite file since it last asked (`PRAGMA
    data_version`: a read of the shared WAL index, no query plan, no disk read), so a
    poller runs its real query only when there is something new."""

    def __init__(self, path: Path):
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._seen: int | None = None

    def __call__(self) -> bool:
        (version,) = self._conn.execute("PRAGMA data_version").fetchone()
        changed, self._seen = version != self._seen, version
        return bool(changed)

    def close(self) -> None:
        self._conn.close()


class PostgresChanges:
    """Says whether anyone committed events since it last asked, as SqliteChanges does.

    A trigger on the events table NOTIFYs `EVENTS_CHANNEL` with each inserting
    transaction's commit (installed here, once per database: the first API to start puts
    it there); this LISTENs on a connection of its own, so an idle poll reads a socket
    instead of querying the database hundreds of times a second.
    """

    EVENTS_CHANNEL = "gpgpu_events"

    def __init__(self, settings: Settings, events_table: str):
        import psycopg
        from psycopg import sql

        self._conn = psycopg.connect(settings.postgres_conninfo(), autocommit=True)
        try:
            schema = settings.pg_schema
            if schema:
                self._conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            table = sql.Identifier(*([schema] if schema else []), events_table)
            function = sql.Identifier(*([schema] if schema else []), f"{events_table}_notify")
            trigger = sql.Identifier(f"{events_table}_notify")
            with self._conn.transaction():
                # Replicas starting together must not replace the function at the same time.
                self._conn.execute("SELECT pg_advisory_xact_lock(hashtext('gpgpu_events_notify'))")
                self._conn.execute(sql.SQL(
                    "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN PERFORM pg_notify({}, ''); RETURN NULL; END $$"
                ).format(function, sql.Literal(self.EVENTS_CHANNEL)))
                self._conn.execute(sql.SQL(
                    "CREATE OR REPLACE TRIGGER {} AFTER INSERT ON {} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION {}()"
                ).format(trigger, table, function))
            self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.EVENTS_CHANNEL)))
        except BaseException:
            self._conn.close()
            raise

    def __call__(self) -> bool:
        # Drain every notification that arrived; never wait for one.
        return sum(1 for _ in self._conn.notifies(timeout=0)) > 0

    def close(self) -> None:
        self._conn.close()
