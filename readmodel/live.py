"""Live delivery: the thread that keeps the read model current, and the wake-ups that
tell subscribers (in this process, and in other API replicas through PostgreSQL NOTIFY)
that it moved."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from infra.db import PostgresChanges, SqliteChanges
from infra.settings import Settings
from readmodel.projector import CHANNEL, Projector

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]


class Broadcaster:
    """Wakes every waiting subscriber when the projection moves forward.

    A wake's result is the rows the batch added when this process applied it (every row
    of that batch), or None when it only knows that something changed (another replica's
    NOTIFY): then subscribers read the view. The pushed rows are kept per stream, the
    last `RECENT_PER_STREAM` of the last `RECENT_STREAMS` streams, so a hundred
    subscribers cost no hundred queries, nor does one that fell a few events behind
    while it was sending. A waiter takes the current future *before* reading, so an
    advance that lands between its read and its wait is never missed.
    """

    RECENT_PER_STREAM = 256
    RECENT_STREAMS = 2048

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._future: asyncio.Future[Rows | None] = loop.create_future()
        self._recent: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        self._pushed_to = 0  # the last position whose rows were pushed here
        # Told of each advance on the event loop, after the rows are kept (api/multiplex.py).
        self.listeners: list[Callable[[int, Rows | None], None]] = []

    def current(self) -> asyncio.Future[Rows | None]:
        return self._future

    def advance(self, position: int, rows: Rows | None) -> None:
        """From any thread: the projection reached `position`, adding `rows` (None: not
        known here)."""
        self.loop.call_soon_threadsafe(self._resolve, position, rows)

    def recent(self, stream: str, after: int) -> Rows | None:
        """The kept rows of `stream` after seq `after`, oldest first ([] if none); None if
        they do not go on from `after` (some were never pushed here, or are gone): then
        the caller reads the view."""
        kept = self._recent.get(stream)
        newer: Rows = []
        for row in reversed(kept or ()):  # a subscriber is seldom more than a few behind
            if row["seq"] <= after:
                break
            newer.append(row)
        newer.reverse()
        return None if newer and newer[0]["seq"] != after + 1 else newer

    def _resolve(self, position: int, rows: Rows | None) -> None:
        if rows is None and position <= self._pushed_to:
            return  # the NOTIFY of a batch this process applied and pushed already
        for row in rows or ():
            stream = row["stream"]
            kept = self._recent.get(stream)
            if kept is None:
                kept = self._recent[stream] = deque(maxlen=self.RECENT_PER_STREAM)
                if len(self._recent) > self.RECENT_STREAMS:
                    self._recent.popitem(last=False)
            else:
                self._recent.move_to_end(stream)
            kept.append(row)
        if rows is not None:
            self._pushed_to = max(self._pushed_to, position)
        for listener in self.listeners:
            try:
                listener(position, rows)
            except Exception:  # one listener's fault must not stop the others' wake-ups
                log.exception("a listener of the projection's advance failed")
        future, self._future = self._future, self.loop.create_future()
        if not future.done():
            future.set_result(rows)


class PostgresListener(threading.Thread):
    """LISTENs on a dedicated connection: another replica's projection woke us."""

    def __init__(self, settings: Settings, broadcaster: Broadcaster):
        super().__init__(name="pg-listen", daemon=True)
        self.settings, self.broadcaster = settings, broadcaster
        self.stopping = threading.Event()

    def run(self) -> None:
        import psycopg

        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.settings.postgres_conninfo(), autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not self.stopping.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self.broadcaster.advance(int(note.payload), None)
            except Exception:
                log.exception("LISTEN connection lost; reconnecting")
                self.stopping.wait(1.0)


class ProjectionThread(threading.Thread):
    """Runs the projector: applies new events as soon as they are committed.

    With `changed` (infra.db's SqliteChanges or PostgresChanges) an idle poll costs a
    pragma or a look at a LISTEN socket, not two queries; the projector still looks for
    itself every `FULL_POLL_S`. It polls every `idle_sleep_s` while events come, and
    every `quiet_sleep_s` once none came for `QUIET_AFTER_S`: a network at rest, or a
    test's between its jobs, wakes 40 times a second, not 200 (its poll was ~2 % of a
    core per API process), and the first event after a quiet spell waits 25 ms at most.
    """

    FULL_POLL_S = 1.0
    QUIET_AFTER_S = 1.0

    def __init__(self, projector: Projector, idle_sleep_s: float = 0.005,
                 changed: SqliteChanges | PostgresChanges | None = None,
                 quiet_sleep_s: float = 0.025):
        super().__init__(name="projection", daemon=True)
        self.projector, self.idle_sleep_s, self.changed = projector, idle_sleep_s, changed
        self.quiet_sleep_s = max(quiet_sleep_s, idle_sleep_s)
        self.stopping = threading.Event()

    def run(self) -> None:
        next_full = last_applied = 0.0
        try:
            while not self.stopping.is_set():
                applied = 0
                # Asked before the batch is read: a commit after the read shows next time.
                if self._changed() or time.monotonic() >= next_full:
                    next_full = time.monotonic() + self.FULL_POLL_S
                    try:
                        applied = self.projector.run_once()
                    except Exception:
                        log.exception("projection batch failed; retrying")
                if applied:
                    last_applied = time.monotonic()
                else:
                    quiet = time.monotonic() - last_applied > self.QUIET_AFTER_S
                    self.stopping.wait(self.quiet_sleep_s if quiet else self.idle_sleep_s)
        finally:
            self._stop_watching()

    def _changed(self) -> bool:
        if self.changed is None:
            return True
        try:
            return self.changed()
        except Exception:
            log.exception("cannot tell whether the event store changed; polling it instead")
            self._stop_watching()
            return True

    def _stop_watching(self) -> None:
        if self.changed is not None:
            self.changed.close()
            self.changed = None
