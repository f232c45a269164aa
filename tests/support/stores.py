"""Event stores for tests, one home: settings for a store of each kind, PostgreSQL's in a
scratch schema of its own.

A scratch schema is named by a fresh uuid, so any number of tests and xdist workers share
the `test` database without seeing each other's events; it is dropped when the block ends.
Where PostgreSQL cannot be reached, only the tests that ask for it are skipped (saying why).
"""

from __future__ import annotations

import functools
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from infra.settings import Settings

STORES = ("memory", "sqlite", "postgres")
CONNECT_TIMEOUT_S = 3
DROP_LOCK_TIMEOUT = "10s"  # a connection a test left open must not hang the drop


@functools.cache
def postgres_unreachable() -> str | None:
    """Why PostgreSQL can't be used (None when it can); asked once per process."""
    conninfo = Settings(event_store="postgres").postgres_conninfo()
    try:
        with psycopg.connect(conninfo, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True) as c:
            c.execute("SELECT 1")
    except Exception as exc:  # any failure to connect means: skip the postgres store
        detail = " ".join(str(exc).split())
        return f"PostgreSQL not reachable ({conninfo}): {type(exc).__name__}: {detail}"
    return None


@contextmanager
def scratch_schema(home: Path) -> Iterator[Settings]:
    """PostgreSQL settings over a fresh schema of the `test` database, dropped afterwards."""
    reason = postgres_unreachable()
    if reason is not None:
        pytest.skip(reason)
    schema = f"t_{uuid.uuid4().hex}"
    # Production's rule: with PostgreSQL the keys are given, not made under home.
    settings = Settings(event_store="postgres", pg_schema=schema, home=home,
                        signing_key=secrets.token_hex(32),
                        temporal_payload_keys=secrets.token_hex(32))
    conninfo = settings.postgres_conninfo()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield settings
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"SET lock_timeout = '{DROP_LOCK_TIMEOUT}'")
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextmanager
def store_settings(store: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings for one store ("memory", "sqlite", "postgres") with its files in tmp_path."""
    if store == "postgres":
        with scratch_schema(tmp_path) as settings:
            yield settings
        return
    yield Settings(event_store=store, home=tmp_path)  # type: ignore[arg-type]
