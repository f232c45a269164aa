"""The SQLite event store waits out a write lock another process holds, however many of
this process's threads wait with it (infra/sqlite_store.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from domain.application import Network
from infra.settings import Settings

HELD_S = 6.0  # longer than eventsourcing's own pool waits (5 s)
WRITERS = 6


def test_reads_and_writes_wait_out_another_process_holding_the_write_lock(
    tmp_path: Path,
) -> None:
    settings = Settings(event_store="sqlite", home=tmp_path)
    app = Network(env=settings.eventsourcing_env())
    app.open_client("first", 1)  # the tables exist
    other = sqlite3.connect(settings.events_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process's long write
    release = threading.Timer(HELD_S, other.commit)
    release.start()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(WRITERS + 3) as pool:  # control steps, side by side
            writes = [pool.submit(app.open_client, f"waiting-{n}", 1) for n in range(WRITERS)]
            time.sleep(0.5)  # the writers hold the pool now: reads queue behind them
            reads = [pool.submit(app.balance, "client:first") for _ in range(3)]
            assert [read.result() for read in reads] == [1, 1, 1]
            for write in writes:
                write.result()
    finally:
        release.join()
        other.close()
    assert time.monotonic() - started >= HELD_S - 0.5  # they waited for the lock...
    assert [app.balance(f"client:waiting-{n}") for n in range(WRITERS)] == [1] * WRITERS
    app.close()
