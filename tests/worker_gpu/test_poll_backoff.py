"""An agent whose API cannot be reached asks for assignments again at least every
UNREACHABLE_BACKOFF_S (worker_gpu/agent.py): once the API is back, the control worker gives
a step up as not picked up after the pickup bound (6 s in the test networks), and an agent
still backing off for 8 s lost a run that way (tests/reliability/test_kill_restart.py)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future
from typing import Any

from worker_gpu.agent import _take_assignments
from worker_gpu.api_client import UNREACHABLE_BACKOFF_S, ApiUnreachable


class DownThenUp:
    def __init__(self, down_for: int):
        self.down_for = down_for
        self.asked: list[float] = []

    def assignments(self, provider_id: str, wait_s: float) -> list[dict[str, Any]]:
        self.asked.append(time.monotonic())
        if len(self.asked) <= self.down_for:
            raise ApiUnreachable("connection refused")
        time.sleep(0.05)
        return []


async def test_an_unreachable_api_is_asked_again_within_a_second() -> None:
    api = DownThenUp(down_for=7)
    stop = asyncio.Event()

    def start(_: dict[str, object]) -> Future[None]:
        raise AssertionError("nothing to start")

    task = asyncio.create_task(_take_assignments(api, "p1", stop, set(), start))  # type: ignore[arg-type]
    deadline = time.monotonic() + 20
    while len(api.asked) <= api.down_for and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    gaps = [b - a for a, b in zip(api.asked, api.asked[1:], strict=False)][:api.down_for]
    assert len(gaps) == api.down_for
    assert max(gaps) < UNREACHABLE_BACKOFF_S + 0.5, gaps  # was 0.5, 1, 2, 4, 8, 10, 10
