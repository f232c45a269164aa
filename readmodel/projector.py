"""The read-model projection: folds the event log into views, idempotently.

Views and the tracking position are written in one transaction, and the
position only moves forward from where this batch started, so two runners (or
a crash between batches) never apply an event twice or skip one. The whole
read model can be rebuilt from the log.
"""

from __future__ import annotations

import gc
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from eventsourcing.application import Application
from eventsourcing.persistence import Notification

from infra.db import Cursor
from readmodel.folding import Fold, Read, read_events
from readmodel.schema import VIEW_TABLES, ViewDB

log = logging.getLogger(__name__)


def transient(err: BaseException) -> bool:
    """An error of the database, not of the event: the same event may apply next time."""
    if isinstance(err, sqlite3.OperationalError):
        return True
    try:
        import psycopg
    except ImportError:
        return False
    return isinstance(err, psycopg.OperationalError | psycopg.InterfaceError)

NAME = "views"
# Bump when the views' tables or folding change: the next start rebuilds them from the log.
VIEWS_VERSION = 13
CHANNEL = "gpgpu_views"  # PostgreSQL NOTIFY channel: every API replica wakes its subscribers

@contextmanager
def _no_gc() -> Iterator[None]:
    """No cyclic garbage collection while a batch folds: it makes thousands of small dicts
    and tuples, none in a cycle, and the collections they set off cost a tenth of the
    time. Collection resumes (if it was on) when the batch is folded."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Projector:
    def __init__(self, app: Application[Any], db: ViewDB, batch_size: int = 2000):
        self.app, self.db, self.batch_size = app, db, batch_size
        # Called after each committed batch with the new position and the job events it added.
        self.listeners: list[Callable[[int, list[dict[str, Any]]], None]] = []
        self._added: list[dict[str, Any]] = []  # the history rows this run_once added
        self._position: int | None = None
        with db.transaction() as cur:
            # Several runners may start at once: the first insert wins, the others do nothing.
            cur.execute(
                "INSERT INTO tracking (name, position) VALUES (?, 0) ON CONFLICT DO NOTHING",
                (NAME,),
            )
            version = cur.one("SELECT position FROM tracking WHERE name = 'views_version'")
            stale = version is None or version["position"] != VIEWS_VERSION
            if stale:
                cur.execute(
                    "INSERT INTO tracking (name, position) VALUES ('views_version', ?)"
                    " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                    (VIEWS_VERSION,),
                )
        if stale and self.position() > 0:
            log.warning("read model is from another version: rebuilding it from the event log")
            db.reset_views()
            self.rebuild()

    def position(self) -> int:
        rows = self.db.query("SELECT position FROM tracking WHERE name = ?", (NAME,))
        return int(rows[0]["position"])

    def run_once(self) -> int:
        """Project the next batch of events; returns how many were taken (applied or set aside).

        The batch is applied in one transaction. If it fails, it is applied again one event
        per transaction, and an event that cannot be applied alone is set aside (recorded in
        `projection_set_aside`, logged, counted in /metrics) while the position moves past
        it: one tenant's bad event never stops the read model for the others. An error of
        the database itself (a lock, a lost connection) is no event's fault: it is raised,
        and the batch is tried again later.
        """
        # Where this runner's last batch left the position (one query less per poll). Stale
        # only if another runner moved it: then the conditional update below finds out.
        start = self._position if self._position is not None else self.position()
        return self._apply(start, self._select(start))

    def _select(self, start: int) -> list[Read]:
        """The next batch of stored events after position `start`, read (read_events)."""
        notifications = self.app.recorder.select_notifications(
            start=start, limit=self.batch_size, inclusive_of_start=False
        )
        return read_events(notifications, self.app.mapper)

    def _apply(self, start: int, reads: list[Read]) -> int:
        """Apply a batch read after position `start` (run_once says how)."""
        if not reads:
            return 0
        notifications = [read[0] for read in reads]
        self._added = []
        try:
            with self.db.transaction() as cur:
                if not self._advance(cur, start, notifications[-1].id):
                    return 0  # another runner applied this batch first; its transaction wins
                fold = Fold(cur, keep_added=bool(self.listeners))
                with self.db.pipeline(), _no_gc():  # PostgreSQL: no round trip per write
                    fold.prefetch(reads)
                    for read in reads:
                        fold.apply_read(read, self.app.mapper)
                    fold.write_changes()
                fold.write_appends()  # PostgreSQL: a COPY per table, which a pipeline cannot run
                self._added = fold.added
                if self.db.is_postgres:
                    cur.execute("SELECT pg_notify(?, ?)", (CHANNEL, str(notifications[-1].id)))
        except Exception as err:
            if transient(err):
                raise
            log.warning("a projection batch of %d events failed (%s: %s); applying them one "
                        "by one", len(notifications), type(err).__name__, err)
            return self._run_singly(start, notifications)
        last = self._position = notifications[-1].id
        for listener in self.listeners:
            listener(last, self._added)
        return len(notifications)

    def _advance(self, cur: Cursor, start: int, to: int) -> bool:
        """Move the position from `start` to `to`; False if another runner moved it first."""
        moved = cur.execute(
            "UPDATE tracking SET position = ? WHERE name = ? AND position = ?", (to, NAME, start)
        )
        if moved != 1:
            self._position = None  # read it again next time
        return moved == 1

    def _run_singly(self, start: int, notifications: Sequence[Notification]) -> int:
        self._added = []
        position = start
        for n in notifications:
            try:
                with self.db.transaction() as cur:
                    if not self._advance(cur, position, n.id):
                        return 0  # another runner is ahead; what this one did is committed
                    fold = Fold(cur)
                    fold.apply_stored(n, self.app.mapper)
                    fold.flush()
                self._added += fold.added
            except Exception as err:
                if transient(err):
                    raise
                if not self._set_aside(position, n, err):
                    return 0
            position = self._position = n.id
        if self.db.is_postgres:
            self.db.query("SELECT pg_notify(?, ?)", (CHANNEL, str(position)))
        for listener in self.listeners:
            listener(position, self._added)
        return len(notifications)

    def _set_aside(self, start: int, n: Notification, err: Exception) -> bool:
        """Record that event `n` cannot be applied and move past it."""
        error = f"{type(err).__name__}: {err}"[:2000]
        with self.db.transaction() as cur:
            if not self._advance(cur, start, n.id):
                return False
            cur.execute(
                "INSERT INTO projection_set_aside (notification_id, topic, error)"
                " VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (n.id, n.topic, error),
            )
        log.error("projection: event %d (%s of %s) set aside: %s", n.id, n.topic,
                  n.originator_id, error)
        return True

    def catch_up(self) -> int:
        """run_once until no event is left. Each batch is read and decoded on a thread of its
        own while the one before it is applied: the decoding runs while this thread waits
        for the database, and the database's side of the read while this one folds."""
        total = 0
        with ThreadPoolExecutor(1, thread_name_prefix="projection-read") as reader:
            start = self._position if self._position is not None else self.position()
            ahead = reader.submit(self._select, start)
            while reads := ahead.result():
                last = reads[-1][0].id
                # Read on from this batch's end: taken whole (as run_once returns when it
                # takes any), the position moves there.
                ahead = reader.submit(self._select, last)
                applied = self._apply(start, reads)
                if not applied:
                    break
                total, start = total + applied, last
        return total

    def rebuild(self) -> int:
        """Drop every view and project the whole log again."""
        with self.db.transaction() as cur:
            for table in VIEW_TABLES:
                cur.execute(f"DELETE FROM {table}")
            cur.execute("UPDATE tracking SET position = 0 WHERE name = ?", (NAME,))
        self._position = None
        return self.catch_up()
