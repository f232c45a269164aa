"""On PostgreSQL, a projection batch applied by another process wakes this API's subscribers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from domain.application import Network
from infra.settings import Settings
from readmodel.live import Broadcaster, PostgresListener
from readmodel.projector import Projector
from readmodel.schema import ViewDB
from tests.support.stores import store_settings


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[Settings]:
    with store_settings("postgres", tmp_path) as s:
        yield s


async def test_notify_wakes_a_replica_that_did_not_apply_the_batch(pg: Settings) -> None:
    broadcaster = Broadcaster(asyncio.get_running_loop())
    listener = PostgresListener(pg, broadcaster)
    listener.start()
    views = ViewDB(pg)
    try:
        app = Network(env=pg.eventsourcing_env())
        other_replica = Projector(app, views)  # its listeners do not include our broadcaster
        await asyncio.sleep(0.5)  # the LISTEN is in place
        woken = broadcaster.current()
        app.open_client("alice", 5)
        started = time.perf_counter()
        assert await asyncio.to_thread(other_replica.run_once) > 0
        await asyncio.wait_for(woken, 2.0)
        assert time.perf_counter() - started < 0.5  # NOTIFY, not the one-second fallback
    finally:
        listener.stopping.set()
        listener.join(5)
        views.close()
