"""Jobs' live logs: the output each run's provider sends with its heartbeats, kept bounded.

Kept beside the read model, as heartbeats are (no event says what a job printed): the API
writes a chunk as its run's provider sends it (api/assignments.py) and the `jobLog`
subscription reads the chunks back in order (api/schema.py, api/joblog.py). Each chunk
names its offset in the run's whole output, so a resent chunk is stored once and a gap
(output the provider passed over, or the API trimmed) is counted on the next chunk kept
(`skipped`). A run keeps at most `max_run_bytes` of text and a job `max_job_bytes`: past
that the oldest chunks go.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from infra.db import Cursor, Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS job_log (
        job_id TEXT NOT NULL, seq INTEGER NOT NULL, attempt INTEGER NOT NULL,
        provider_id TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
        output_offset BIGINT NOT NULL, size INTEGER NOT NULL, skipped BIGINT NOT NULL,
        text TEXT NOT NULL, PRIMARY KEY (job_id, seq))""",
    "CREATE INDEX IF NOT EXISTS job_log_run ON job_log (job_id, attempt, seq)",
    "CREATE INDEX IF NOT EXISTS job_log_at ON job_log (at)",
    # Per run: the next byte of output expected, and the text kept.
    """CREATE TABLE IF NOT EXISTS job_log_runs (
        job_id TEXT NOT NULL, attempt INTEGER NOT NULL, provider_id TEXT NOT NULL,
        next_offset BIGINT NOT NULL, kept BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (job_id, attempt))""",
]

MAX_RUN_BYTES = 1 << 20  # the text one run keeps
MAX_JOB_BYTES = 4 << 20  # ... and all runs of one job together
KEEP_S = 7 * 24 * 3600.0  # a log goes this long after its last chunk
_TRIES = 3  # a clash on a chunk's number (not expected: writers take the job's lock)


class LogRefused(ValueError):
    """A chunk the API does not store; the message names the field."""


@dataclass(frozen=True)
class Stored:
    seq: int | None  # None: a chunk already received (sent again)
    trimmed: int  # bytes of older text that went to keep within the bounds


def _conflict(err: Exception) -> bool:
    return isinstance(err, sqlite3.IntegrityError) or any(
        c.__name__ in ("UniqueViolation", "IntegrityError") for c in type(err).__mro__)


class JobLogs:
    def __init__(self, db: Database, max_run_bytes: int = MAX_RUN_BYTES,
                 max_job_bytes: int = MAX_JOB_BYTES, clock: Any = time.time):
        self.db, self.clock = db, clock
        self.max_run_bytes, self.max_job_bytes = max_run_bytes, max_job_bytes
        db.ensure(SCHEMA)

    def append(self, job_id: str, attempt: int, provider_id: str, offset: int, size: int,
               text: str) -> Stored:
        """Store `size` bytes of the run's output from `offset` (as `text`)."""
        for left in range(_TRIES, 0, -1):
            try:
                with self.db.transaction() as cur:
                    return self._append(cur, job_id, attempt, provider_id, offset, size, text)
            except Exception as err:
                if not _conflict(err) or left == 1:
                    raise
        raise AssertionError("unreachable")

    def _append(self, cur: Cursor, job_id: str, attempt: int, provider_id: str, offset: int,
                size: int, text: str) -> Stored:
        now = self.clock()
        if cur.is_postgres:  # one writer per job at a time, whichever replica (SQLite: always)
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"job_log:{job_id}",))
        cur.execute(
            "INSERT INTO job_log_runs (job_id, attempt, provider_id, next_offset, kept, at)"
            " VALUES (?, ?, ?, 0, 0, ?) ON CONFLICT (job_id, attempt) DO NOTHING",
            (job_id, attempt, provider_id, now),
        )
        run = cur.one("SELECT next_offset, kept FROM job_log_runs WHERE job_id = ?"
                      " AND attempt = ?", (job_id, attempt))
        assert run is not None
        expected = int(run["next_offset"])
        if offset + size <= expected and size:
            return Stored(None, 0)  # sent again after an answer was lost
        if offset < expected:
            raise LogRefused(f"log.offset: {offset} overlaps output already received "
                             f"(the next byte expected is {expected})")
        if not size:
            return Stored(None, 0)
        last = cur.one("SELECT MAX(seq) AS seq FROM job_log WHERE job_id = ?", (job_id,))
        seq = int((last or {}).get("seq") or 0) + 1
        stored = len(text.encode())
        cur.execute(
            "INSERT INTO job_log (job_id, seq, attempt, provider_id, at, output_offset, size,"
            " skipped, text) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, seq, attempt, provider_id, now, offset, size, offset - expected, text),
        )
        kept = int(run["kept"]) + stored
        cur.execute("UPDATE job_log_runs SET next_offset = ?, kept = ?, at = ?"
                    " WHERE job_id = ? AND attempt = ?",
                    (offset + size, kept, now, job_id, attempt))
        trimmed = 0
        if kept > self.max_run_bytes:
            trimmed += self._trim(cur, job_id, attempt, kept - self.max_run_bytes)
        total = cur.one("SELECT SUM(kept) AS kept FROM job_log_runs WHERE job_id = ?",
                        (job_id,))
        over = int((total or {}).get("kept") or 0) - self.max_job_bytes
        if over > 0:
            trimmed += self._trim(cur, job_id, None, over)
        return Stored(seq, trimmed)

    def _trim(self, cur: Cursor, job_id: str, attempt: int | None, excess: int) -> int:
        """Drop the oldest chunks (of the run, or of the job) until `excess` bytes went; the
        next chunk kept of each run counts what went before it in `skipped`."""
        where = "job_id = ?" + ("" if attempt is None else " AND attempt = ?")
        args: tuple[Any, ...] = (job_id,) if attempt is None else (job_id, attempt)
        rows = cur.all(f"SELECT seq, attempt, size, skipped, text FROM job_log WHERE {where}"
                       " ORDER BY seq LIMIT 1000", args)
        gone: dict[int, tuple[int, int]] = {}  # attempt -> (text bytes, output bytes)
        dropped = 0
        for r in rows[:-1]:  # the newest chunk stays
            if dropped >= excess:
                break
            text_bytes = len(str(r["text"]).encode())
            cur.execute("DELETE FROM job_log WHERE job_id = ? AND seq = ?", (job_id, r["seq"]))
            kept, output = gone.get(r["attempt"], (0, 0))
            gone[r["attempt"]] = (kept + text_bytes, output + r["skipped"] + r["size"])
            dropped += text_bytes
        for run, (text_bytes, output) in gone.items():
            cur.execute("UPDATE job_log_runs SET kept = kept - ? WHERE job_id = ? AND attempt = ?",
                        (text_bytes, job_id, run))
            nxt = cur.one("SELECT MIN(seq) AS seq FROM job_log WHERE job_id = ? AND attempt = ?",
                          (job_id, run))
            if nxt is not None and nxt["seq"] is not None:
                cur.execute("UPDATE job_log SET skipped = skipped + ? WHERE job_id = ? AND seq = ?",
                            (output, job_id, nxt["seq"]))
        return dropped

    def after(self, job_id: str, after: int, limit: int = 256) -> list[dict[str, Any]]:
        """The job's chunks with seq > `after`, oldest first."""
        return self.db.query(
            "SELECT seq, attempt, provider_id, at, output_offset, size, skipped, text"
            " FROM job_log WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (job_id, after, max(1, min(limit, 1000))),
        )

    def forget_old(self) -> None:
        """Logs whose last chunk is older than KEEP_S go."""
        cutoff = self.clock() - KEEP_S
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM job_log WHERE job_id IN (SELECT job_id FROM job_log_runs"
                        " GROUP BY job_id HAVING MAX(at) < ?)", (cutoff,))
            cur.execute("DELETE FROM job_log_runs WHERE job_id IN (SELECT job_id FROM"
                        " job_log_runs GROUP BY job_id HAVING MAX(at) < ?)", (cutoff,))
