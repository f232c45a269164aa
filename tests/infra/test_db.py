"""The control plane's SQL database (infra/db.py) on PostgreSQL, as several processes use it."""

from __future__ import annotations

import threading
from pathlib import Path

from infra.db import Database
from tests.support.stores import store_settings

SCHEMA = [
    f"CREATE TABLE IF NOT EXISTS race_{n} (id TEXT PRIMARY KEY, n BIGINT NOT NULL)"
    for n in range(8)
]


def test_processes_starting_together_each_ensure_the_schema(tmp_path: Path) -> None:
    """Two control workers (or an API and a worker) start at once on a fresh schema: each
    ensures the same tables. PostgreSQL's CREATE TABLE IF NOT EXISTS is not safe against a
    concurrent one (the loser fails on pg_type's unique index); they must take turns."""
    with store_settings("postgres", tmp_path) as settings:
        for _ in range(3):  # each round on tables that do not exist yet
            errors: list[BaseException] = []
            start = threading.Barrier(6)

            def open_one(start: threading.Barrier, errors: list[BaseException]) -> None:
                try:
                    start.wait(10)
                    Database(settings, SCHEMA).close()
                except BaseException as err:
                    errors.append(err)

            threads = [threading.Thread(target=open_one, args=(start, errors)) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert not errors, errors
            db = Database(settings)
            with db.transaction() as cur:
                for n in range(8):
                    cur.execute(f"DROP TABLE race_{n}")
            db.close()
