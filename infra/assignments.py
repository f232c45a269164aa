"""The assignment table: GPU steps waiting for, or held by, a provider.

The control worker writes a row when a workflow schedules a GPU step (activities/assign.py);
the API hands it out to the provider's agent, takes its heartbeats and its result, and
completes the step's activity with the task token kept here (api/assignments.py). Every
state change is one guarded UPDATE, so any number of API and control-worker replicas may
share the table: an assignment is handed out once and finished once.

The request (the job's `env`, presigned grants) and the task token are sealed in the row
(infra/row_cipher.py: AES-256-GCM under a key derived from the Temporal payload keys, bound
to the assignment's id and column) and opened only by the API and the control worker. A row
that does not open (written in the clear by an earlier version, changed, moved from another
row, sealed under a key no longer listed) is closed as `unreadable` the first time it is read
and never handed out: its step then times out in Temporal and is placed again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from typing import Any

from infra.db import Column, Database
from infra.row_cipher import RowCipher, RowSealError

log = logging.getLogger(__name__)

SCHEMA = [
    # The task token lets the control plane complete the step's activity; it never leaves
    # this table. It and the request are sealed (RowCipher), never in the clear.
    """CREATE TABLE IF NOT EXISTS assignments (
        assignment_id TEXT PRIMARY KEY, provider_id TEXT NOT NULL, kind TEXT NOT NULL,
        request TEXT NOT NULL, task_token TEXT NOT NULL, workflow_id TEXT NOT NULL,
        run_id TEXT NOT NULL, activity_id TEXT NOT NULL, attempt INTEGER NOT NULL,
        gpus INTEGER NOT NULL DEFAULT 0, heartbeat_timeout_s DOUBLE PRECISION NOT NULL,
        pickup_by DOUBLE PRECISION NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        handed_out_at DOUBLE PRECISION, last_seen_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION, outcome TEXT NOT NULL DEFAULT '',
        trace TEXT NOT NULL DEFAULT '{}', UNIQUE (workflow_id, run_id, activity_id))""",
    "CREATE INDEX IF NOT EXISTS assignments_open ON assignments (finished_at, provider_id)",
]
COLUMNS_ADDED: list[Column] = [("assignments", "trace", "TEXT NOT NULL DEFAULT '{}'")]

# Finished rows are kept this long (a second complete is refused, not "unknown"), then go.
KEEP_FINISHED_S = 24 * 3600.0
# At most this many assignments in one answer to a poll.
MAX_HANDED_OUT = 64


@dataclasses.dataclass(frozen=True)
class Assignment:
    assignment_id: str
    provider_id: str
    kind: str  # stage_inputs | execute_job | upload_outputs
    request: dict[str, Any]
    task_token: bytes
    workflow_id: str
    activity_id: str
    attempt: int
    gpus: int
    heartbeat_timeout_s: float
    pickup_by: float
    created_at: float
    handed_out_at: float | None
    finished_at: float | None
    outcome: str
    trace: dict[str, str]  # the step's trace context (W3C headers), when tracing is on

    @property
    def open(self) -> bool:
        return self.finished_at is None

    def public(self) -> dict[str, Any]:
        """What the provider's agent is told: never the task token or workflow ids."""
        return {
            "assignmentId": self.assignment_id,
            "providerId": self.provider_id,
            "kind": self.kind,
            "request": self.request,
            "heartbeatTimeoutS": self.heartbeat_timeout_s,
            "trace": self.trace,
        }


def assignment_id(workflow_id: str, run_id: str, activity_id: str, attempt: int) -> str:
    """One id per try of one step: a retried try is a new assignment."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL,
                          f"assignment:{workflow_id}/{run_id}/{activity_id}#{attempt}"))


class AssignmentBoard:
    def __init__(self, db: Database, cipher: RowCipher, clock: Any = time.time):
        self.db, self.cipher, self.clock = db, cipher, clock
        db.ensure(SCHEMA, COLUMNS_ADDED)

    def _seal(self, aid: str, column: str, plain: bytes) -> str:
        return self.cipher.seal("assignments", column, aid, plain)

    def _row(self, r: dict[str, Any]) -> Assignment:
        """The row opened; RowSealError if its request or task token does not open."""
        aid = r["assignment_id"]
        request = self.cipher.open("assignments", "request", aid, r["request"])
        token = self.cipher.open("assignments", "task_token", aid, r["task_token"])
        return Assignment(
            aid, r["provider_id"], r["kind"], json.loads(request), token, r["workflow_id"],
            r["activity_id"], int(r["attempt"]), int(r["gpus"]),
            float(r["heartbeat_timeout_s"]), float(r["pickup_by"]), float(r["created_at"]),
            r["handed_out_at"], r["finished_at"], r["outcome"], json.loads(r["trace"]),
        )

    def _opened(self, rows: list[dict[str, Any]]) -> list[Assignment]:
        """The rows that open; each that does not is closed (`unreadable`), never handed out."""
        found = []
        for r in rows:
            try:
                found.append(self._row(r))
            except RowSealError as err:
                log.warning("assignment closed as unreadable: %s", err)
                self.finish(r["assignment_id"], "unreadable")
        return found

    def publish(
        self, *, provider_id: str, kind: str, request: dict[str, Any], task_token: bytes,
        workflow_id: str, run_id: str, activity_id: str, attempt: int, gpus: int,
        heartbeat_timeout_s: float, pickup_timeout_s: float,
        trace: dict[str, str] | None = None,
    ) -> str:
        """Record the step's assignment; a retried try replaces the earlier try's row (its
        agent is told to stop at its next heartbeat: the row is gone)."""
        now = self.clock()
        aid = assignment_id(workflow_id, run_id, activity_id, attempt)
        with self.db.transaction() as cur:
            cur.execute(
                "DELETE FROM assignments WHERE workflow_id = ? AND run_id = ? AND activity_id = ?",
                (workflow_id, run_id, activity_id),
            )
            cur.execute(
                "INSERT INTO assignments (assignment_id, provider_id, kind, request, task_token,"
                " workflow_id, run_id, activity_id, attempt, gpus, heartbeat_timeout_s,"
                " pickup_by, created_at, trace) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (aid, provider_id, kind, self._seal(aid, "request", json.dumps(request).encode()),
                 self._seal(aid, "task_token", task_token), workflow_id,
                 run_id, activity_id, attempt, gpus, heartbeat_timeout_s,
                 now + pickup_timeout_s, now, json.dumps(trace or {})),
            )
        return aid

    def get(self, aid: str) -> Assignment | None:
        rows = self.db.query("SELECT * FROM assignments WHERE assignment_id = ?", (aid,))
        opened = self._opened(rows)
        return opened[0] if opened else None

    def waiting_providers(self) -> set[str]:
        """Providers with an assignment not yet handed out."""
        rows = self.db.query(
            "SELECT DISTINCT provider_id FROM assignments"
            " WHERE finished_at IS NULL AND handed_out_at IS NULL"
        )
        return {r["provider_id"] for r in rows}

    def hand_out(self, provider_id: str) -> list[Assignment]:
        """The provider's assignments not handed out yet, now marked handed out (each once,
        whichever replica asks)."""
        rows = self.db.query(
            "SELECT * FROM assignments WHERE finished_at IS NULL AND handed_out_at IS NULL"
            " AND provider_id = ? ORDER BY created_at LIMIT ?", (provider_id, MAX_HANDED_OUT),
        )
        taken = []
        now = self.clock()
        for a in self._opened(rows):
            with self.db.transaction() as cur:
                won = cur.execute(
                    "UPDATE assignments SET handed_out_at = ?, last_seen_at = ?"
                    " WHERE assignment_id = ? AND handed_out_at IS NULL AND finished_at IS NULL",
                    (now, now, a.assignment_id),
                )
            if won == 1:
                taken.append(dataclasses.replace(a, handed_out_at=now))
        return taken

    def seen(self, aid: str) -> None:
        with self.db.transaction() as cur:
            cur.execute("UPDATE assignments SET last_seen_at = ? WHERE assignment_id = ?",
                        (self.clock(), aid))

    def finish(self, aid: str, outcome: str) -> bool:
        """Close the assignment; False if it was closed already (by anyone)."""
        with self.db.transaction() as cur:
            won = cur.execute(
                "UPDATE assignments SET finished_at = ?, outcome = ?"
                " WHERE assignment_id = ? AND finished_at IS NULL",
                (self.clock(), outcome, aid),
            )
        return won == 1

    def reopen(self, aid: str) -> None:
        """Undo a finish whose completion Temporal did not take (the RPC failed)."""
        with self.db.transaction() as cur:
            cur.execute("UPDATE assignments SET finished_at = NULL, outcome = ''"
                        " WHERE assignment_id = ?", (aid,))

    def waiting(self) -> list[Assignment]:
        """Every assignment not yet handed out."""
        rows = self.db.query(
            "SELECT * FROM assignments WHERE finished_at IS NULL AND handed_out_at IS NULL"
        )
        return self._opened(rows)

    def forget_finished(self) -> None:
        """Close what Temporal has long timed out (no heartbeat for a minute past the
        timeout: its agent died), and drop rows finished long ago."""
        now = self.clock()
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE assignments SET finished_at = ?, outcome = 'lapsed'"
                " WHERE finished_at IS NULL AND handed_out_at IS NOT NULL"
                " AND last_seen_at + heartbeat_timeout_s + 60 < ?", (now, now),
            )
            cur.execute("DELETE FROM assignments WHERE finished_at IS NOT NULL"
                        " AND finished_at < ?", (now - KEEP_FINISHED_S,))
