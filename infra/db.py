"""The control plane's SQL database: SQLite (a file under home) or PostgreSQL, one dialect.

Queries are written with '?' placeholders and translated for psycopg. Each
process opens its own connection; SQLite runs in WAL mode so readers never
block the projection's writer. The tables are their owners': the read model's
(readmodel/schema.py) and the assignment board's (infra/assignments.py) each
ensure their own.
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

# A column added to a table after its first release: (table, column, declaration).
Column = tuple[str, str, str]

# The advisory lock that serialises schema changes across processes on one PostgreSQL.
SCHEMA_LOCK_KEY = 0x6770_6770_5343_4845  # "gpgpSCHE"


class Database:
    """One connection to the database, serialised by a lock."""

    def __init__(self, settings: Settings, schema: Sequence[str] = (),
                 columns_added: Sequence[Column] = ()):
        self.settings = settings
        self.is_postgres = settings.event_store == "postgres"
        self._lock = threading.RLock()
        self._conn: Any = self._connect()
        self.ensure(schema, columns_added)

    def ensure(self, schema: Sequence[str], columns_added: Sequence[Column] = ()) -> None:
        """Create what `schema` declares (each statement IF NOT EXISTS) and add the columns
        that tables made before them lack. On PostgreSQL, processes starting together take
        turns (a transaction-scoped advisory lock): two concurrent `CREATE TABLE IF NOT
        EXISTS` of one table can both miss it, and the second fails on pg_type's unique
        index, which stopped a second control worker at start."""
        with self.transaction() as cur:
            if self.is_postgres:
                cur.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))
            for statement in schema:
                cur.execute(statement)
            self._add_columns(cur, columns_added)

    def _add_columns(self, cur: Cursor, columns_added: Sequence[Column]) -> None:
        for table, column, declaration in columns_added:
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

    def now(self) -> float:
        """Seconds since the epoch on the database's clock: one clock for every process
        that shares the database, on any machine (PostgreSQL's; SQLite's database is on
        this machine, so this machine's)."""
        if not self.is_postgres:
            return time.time()
        rows = self.query("SELECT EXTRACT(EPOCH FROM clock_timestamp()) AS now")
        return float(rows[0]["now"])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class Cursor:
    def __init__(self, db: Database, cur: Any):
        self._db, self._cur = db, cur
        self.is_postgres = db.is_postgres

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cur.execute(self._db._sql(sql), tuple(params))
        return int(self._cur.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cur.executemany(self._db._sql(sql), [tuple(r) for r in rows])

    def insert_rows(self, table: str, columns: Sequence[str],
                    rows: Sequence[Sequence[Any]]) -> None:
        """Insert `rows` into `table`: on PostgreSQL with one COPY (outside a pipeline: COPY
        cannot run in one), on SQLite with one executemany."""
        names = ", ".join(columns)
        if not self.is_postgres:
            marks = ", ".join("?" for _ in columns)
            self._cur.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
            return
        with self._cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        self._cur.execute(self._db._sql(sql), tuple(params))
        row = self._cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in self._cur.description], row, strict=True))

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self._cur.execute(self._db._sql(sql), tuple(params))
        rows = self._cur.fetchall()  # first: in a pipeline, the description comes with them
        cols = [d[0] for d in self._cur.description]
        return [dict(zip(cols, r, strict=True)) for r in rows]


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

    A trigger on the events table NOTIFYs `channel` (EVENTS_CHANNEL, per schema: NOTIFY
    is database-wide, and another schema's commits are not ours) with each inserting
    transaction's commit (installed here, once per database: the first API to start puts
    it there); this LISTENs on a connection of its own, so an idle poll reads a socket
    instead of querying the database hundreds of times a second.
    """

    EVENTS_CHANNEL = "gpgpu_events"

    def __init__(self, settings: Settings, events_table: str):
        import psycopg
        from psycopg import sql

        schema = settings.pg_schema
        self.channel = f"{self.EVENTS_CHANNEL}_{schema}"[:63] if schema else self.EVENTS_CHANNEL
        self._conn = psycopg.connect(settings.postgres_conninfo(), autocommit=True)
        try:
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
                ).format(function, sql.Literal(self.channel)))
                self._conn.execute(sql.SQL(
                    "CREATE OR REPLACE TRIGGER {} AFTER INSERT ON {} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION {}()"
                ).format(trigger, table, function))
            self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except BaseException:
            self._conn.close()
            raise

    def __call__(self) -> bool:
        # Drain every notification that arrived; never wait for one.
        return sum(1 for _ in self._conn.notifies(timeout=0)) > 0

    def close(self) -> None:
        self._conn.close()
