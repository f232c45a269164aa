"""The listener rows: which API processes hear providers now.

Each API process stamps its row every LISTEN_EVERY_S while providers reach it (api/dispatch.py
Dispatch.hearing: a provider's long poll is open there, or one of its requests just came).
The control worker judges a provider silent only across a stretch some row spans
(infra/assignments.py AssignmentBoard.silent, Assignment.pickup_overdue): an outage of every
API, or of the path in front of them, silences no one. Times are on the board's clock (the
database's), so rows of APIs on several machines compare.
"""

from __future__ import annotations

from collections.abc import Callable

from infra.db import Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS listeners (
        listener_id TEXT PRIMARY KEY, up_since DOUBLE PRECISION NOT NULL,
        heard_at DOUBLE PRECISION NOT NULL)""",
]
# How often each API process stamps its listener row, and the gap between two stamps that
# says the process stalled (it heard nothing meanwhile: its hearing starts again).
LISTEN_EVERY_S = 1.0
LISTEN_GAP_S = 2.0


class Listeners:
    def __init__(self, db: Database, clock: Callable[[], float]):
        self.db, self.clock = db, clock
        db.ensure(SCHEMA)

    def stamp(self, listener_id: str, up_since: float) -> None:
        """Stamp this API process's row: providers reach it, so can be heard."""
        now = self.clock()
        with self.db.transaction() as cur:
            if not cur.execute("UPDATE listeners SET heard_at = ?, up_since = ?"
                               " WHERE listener_id = ?", (now, up_since, listener_id)):
                cur.execute("INSERT INTO listeners (listener_id, up_since, heard_at)"
                            " VALUES (?, ?, ?)", (listener_id, up_since, now))

    def rows(self) -> list[tuple[float, float]]:
        """Each API's row: (up since, latest stamp)."""
        return [(float(r["up_since"]), float(r["heard_at"]))
                for r in self.db.query("SELECT up_since, heard_at FROM listeners")]

    def forget(self, listener_id: str) -> None:
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM listeners WHERE listener_id = ?", (listener_id,))

    def forget_stamped_before(self, t: float) -> None:
        """Drop the rows of APIs gone since before `t` (a dead API's row speaks for no step
        once the longest outage is over)."""
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM listeners WHERE heard_at < ?", (t,))
