"""Jobs' live logs in the API: chunks stored as providers send them (api/assignments.py),
followed by the `jobLog` subscription (api/features/jobs.py).

A subscriber is woken at once by a chunk this process stored, and looks every second for
those another replica stored; it ends once the job has ended and every chunk kept was sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from api import auth
from api.waiters import Waiters
from domain.job import TERMINAL_STATES
from infra.db import Database
from readmodel.joblog import JobLogs

POLL_S = 1.0  # how often a subscriber looks for chunks other API replicas stored
BATCH = 256
SWEEP_EVERY_S = 600.0  # how often a process that stores chunks drops logs past their keep


class LiveLogs:
    """The job log store and this process's waiting subscribers."""

    def __init__(self, db: Database):
        self.store = JobLogs(db)
        self._waiters = Waiters()
        self._swept_at = time.monotonic()

    async def append(self, job_id: str, attempt: int, provider_id: str, offset: int,
                     size: int, text: str) -> int:
        """Store a chunk (LogRefused names the field); the bytes of older text trimmed."""
        stored = await asyncio.to_thread(self.store.append, job_id, attempt, provider_id,
                                         offset, size, text)
        if stored.seq is not None:
            self._waiters.wake(job_id)
        if time.monotonic() - self._swept_at > SWEEP_EVERY_S:  # old logs go, now and then
            self._swept_at = time.monotonic()
            await asyncio.to_thread(self.store.forget_old)
        return stored.trimmed

    async def follow(
        self, views: Database, job_id: str, after: int,
        still_allowed: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Every chunk of the job's log with seq > `after`, in order, until the job ended."""
        last = after
        while True:
            rows = await asyncio.to_thread(self.store.after, job_id, last, BATCH)
            for row in rows:
                last = row["seq"]
                yield row
            if len(rows) == BATCH:
                continue
            state = await asyncio.to_thread(
                views.query, "SELECT state FROM jobs WHERE job_id = ?", (job_id,))
            if not state or state[0]["state"] in TERMINAL_STATES:
                # Its runs' last output was stored before their results: read once more.
                for row in await asyncio.to_thread(self.store.after, job_id, last, 1000):
                    yield row
                return
            await self._waiters.wait(job_id, POLL_S)
            if still_allowed is not None and not await still_allowed():
                raise auth.Denied("unauthenticated: the session or API key was revoked or "
                                  "expired")
