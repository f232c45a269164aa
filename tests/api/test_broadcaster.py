"""Subscribers follow a stream from the rows the projection pushes, and read the view only
when those cannot tell them what they missed."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from api.streams import follow_stream
from readmodel.live import Broadcaster


def row(job: str, seq: int) -> dict[str, Any]:
    return {"stream": f"job:{job}", "job_id": job, "seq": seq, "type": "Step"}


class View:
    """The read model as follow_stream queries it: counts the queries."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.queries = 0

    async def query(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        self.queries += 1
        key, after = params
        return sorted((r for r in self.rows if r["job_id"] == key and r["seq"] > after),
                      key=lambda r: r["seq"])  # ORDER BY seq


async def test_pushed_rows_reach_subscribers_without_queries_and_gaps_are_read() -> None:
    broadcaster, view = Broadcaster(asyncio.get_running_loop()), View()
    services: Any = SimpleNamespace(broadcaster=broadcaster, query=view.query)
    stream = follow_stream(services, "job", "j1", 0)
    got: list[int] = []

    async def follow() -> None:
        async for r in stream:
            got.append(r["seq"])

    def push(position: int, rows: list[dict[str, Any]] | None) -> None:
        view.rows += rows or []
        broadcaster.advance(position, rows)

    async def settle() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    task = asyncio.create_task(follow())
    try:
        await settle()
        assert view.queries == 1  # what the stream held when the subscriber came

        push(1, [row("j2", 1), row("j2", 2)])  # another job's batch: nothing to read
        push(2, [row("j1", 1)])
        push(3, [row("j1", 2), row("j3", 1)])
        await settle()
        assert got == [1, 2] and view.queries == 1

        broadcaster.advance(3, None)  # the NOTIFY of a batch already pushed here: no wake
        await settle()
        assert view.queries == 1

        view.rows.append(row("j1", 3))  # applied by another replica: its NOTIFY says so
        broadcaster.advance(4, None)
        await settle()
        assert got == [1, 2, 3] and view.queries == 2

        push(6, [row("j1", 5)])  # seq 4 was never pushed here (view has it): a gap
        view.rows.append(row("j1", 4))
        await settle()
        assert got == [1, 2, 3, 4, 5] and view.queries == 3
    finally:
        task.cancel()


async def test_a_subscriber_far_behind_reads_the_view() -> None:
    broadcaster = Broadcaster(asyncio.get_running_loop())
    broadcaster.RECENT_PER_STREAM = 3
    broadcaster.advance(1, [row("j1", n) for n in range(1, 7)])
    await asyncio.sleep(0)
    assert broadcaster.recent("job:j1", 5) == [row("j1", 6)]
    assert broadcaster.recent("job:j1", 6) == []
    assert broadcaster.recent("job:j1", 1) is None  # seq 2 and 3 are gone from memory
    assert broadcaster.recent("job:unknown", 0) == []
