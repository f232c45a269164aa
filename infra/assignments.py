"""The assignment table: GPU steps waiting for, or held by, a provider.

The control worker writes a row when a workflow schedules a GPU step (activities/assign.py);
the API hands it out to the provider's agent, takes its heartbeats and its result, and
completes the step's activity with the task token kept here (api/assignments.py). Every
state change is one guarded UPDATE, so any number of API and control-worker replicas may
share the table: an assignment is handed out once and finished once.

The request (the job's `env`, presigned grants), the task token and a completed step's
result (kept for a reset's new run: adopt) are sealed in the row
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
import uuid
from typing import Any

from infra.db import Column, Database
from infra.listeners import Listeners
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
        trace TEXT NOT NULL DEFAULT '{}', result TEXT NOT NULL DEFAULT '',
        UNIQUE (workflow_id, run_id, activity_id))""",
    "CREATE INDEX IF NOT EXISTS assignments_open ON assignments (finished_at, provider_id)",
]
COLUMNS_ADDED: list[Column] = [("assignments", "trace", "TEXT NOT NULL DEFAULT '{}'"),
                               ("assignments", "result", "TEXT NOT NULL DEFAULT ''")]

# Finished rows are kept this long (a second complete is refused, not "unknown"), then go.
KEEP_FINISHED_S = 24 * 3600.0
# At most this many assignments in one answer to a poll.
MAX_HANDED_OUT = 64
# The most a step's workflow bears the network's own outages (settings: gpu_outage_grace_s).
MAX_OUTAGE_GRACE_S = 3600.0
# The outcome of a step whose result came once its workflow run had been reset: kept open,
# with its result, for the reset's new run to take (AssignmentBoard.adopt).
HELD = "held"


@dataclasses.dataclass(frozen=True)
class Assignment:
    assignment_id: str
    provider_id: str
    kind: str  # stage_inputs | execute_job | upload_outputs
    request: dict[str, Any]
    task_token: bytes
    workflow_id: str
    run_id: str
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

    @property
    def outage_grace_s(self) -> float:
        """How long the step's workflow bears the network's own outages (its request says)."""
        try:
            return min(MAX_OUTAGE_GRACE_S,
                       max(0.0, float(self.request.get("outage_grace_s", 0.0))))
        except (TypeError, ValueError):
            return 0.0

    def pickup_overdue(self, now: float, hearing: list[tuple[float, float]]) -> bool:
        """Whether its provider did not pick it up in time: past its pickup bound, with an API
        up for a whole pickup bound meanwhile (`hearing`: each listener's up_since and
        latest stamp; the bound runs from the step's publication, or the API's start if
        later, as `silent` does); or, whatever the network's outages, past its bound and its
        outage grace."""
        if now < self.pickup_by:
            return False
        bound = self.pickup_by - self.created_at
        return now >= self.pickup_by + self.outage_grace_s or any(
            heard - max(self.created_at, up) > bound for up, heard in hearing)

    def public(self) -> dict[str, Any]:
        """What the provider's agent is told: never the task token or workflow ids."""
        return {
            "assignmentId": self.assignment_id,
            "providerId": self.provider_id,
            "kind": self.kind,
            "request": self.request,
            "heartbeatTimeoutS": self.heartbeat_timeout_s,
            # Unheard this long (the API away), the network has given the step up: stop.
            "giveUpAfterS": self.heartbeat_timeout_s + self.outage_grace_s,
            "trace": self.trace,
        }


@dataclasses.dataclass(frozen=True)
class Adopted:
    """A step an earlier run of the workflow left behind, now this try's."""

    assignment_id: str
    result: dict[str, Any] | None  # its result, when it came after that run had ended


def assignment_id(workflow_id: str, run_id: str, activity_id: str, attempt: int) -> str:
    """One id per try of one step: a retried try is a new assignment."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL,
                          f"assignment:{workflow_id}/{run_id}/{activity_id}#{attempt}"))


class AssignmentBoard:
    def __init__(self, db: Database, cipher: RowCipher, clock: Any = None):
        # The database's clock by default: the times APIs and control workers on several
        # machines write here (a provider last heard, an API's listener stamp, a pickup
        # deadline) are compared with one another, so they come from one clock.
        self.db, self.cipher = db, cipher
        self.clock = clock or db.now
        db.ensure(SCHEMA, COLUMNS_ADDED)
        self.listeners = Listeners(db, self.clock)  # which APIs hear providers (`silent`)

    def _seal(self, aid: str, column: str, plain: bytes) -> str:
        return self.cipher.seal("assignments", column, aid, plain)

    def _row(self, r: dict[str, Any]) -> Assignment:
        """The row opened; RowSealError if its request or task token does not open."""
        aid = r["assignment_id"]
        request = self.cipher.open("assignments", "request", aid, r["request"])
        token = self.cipher.open("assignments", "task_token", aid, r["task_token"])
        return Assignment(
            aid, r["provider_id"], r["kind"], json.loads(request), token, r["workflow_id"],
            r["run_id"], r["activity_id"], int(r["attempt"]), int(r["gpus"]),
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

    def adopt(
        self, *, provider_id: str, kind: str, job_id: str, job_attempt: int,
        task_token: bytes, workflow_id: str, run_id: str, activity_id: str, attempt: int,
        heartbeat_timeout_s: float, pickup_timeout_s: float,
    ) -> Adopted | None:
        """Take over this step of the job's attempt from an earlier run of the same workflow.

        A Temporal reset ends a workflow's run and starts a new one from an earlier point;
        the new run schedules the step again. Temporal keeps one open run per workflow id,
        so a row of another run of it belongs to a run that is over. Open, the row becomes
        this try's (same assignment id, this try's task token): its agent goes on and
        reports to this try, and the command is not run a second time. Held
        (api/assignments.py: its result came after its run ended) or completed, its result
        is this try's: the step is not run again. None: nothing to take over."""
        for _ in range(3):  # again when an agent's report changed the row as it was taken
            found, lost = self._adopt_once(
                provider_id, kind, job_id, job_attempt, task_token, workflow_id, run_id,
                activity_id, attempt, heartbeat_timeout_s, pickup_timeout_s,
            )
            if found is not None or not lost:
                return found
        return None

    def _adopt_once(
        self, provider_id: str, kind: str, job_id: str, job_attempt: int, task_token: bytes,
        workflow_id: str, run_id: str, activity_id: str, attempt: int,
        heartbeat_timeout_s: float, pickup_timeout_s: float,
    ) -> tuple[Adopted | None, bool]:
        """(what was taken over, whether a row changed under the take-over)."""
        lost = False
        rows = self.db.query(
            "SELECT * FROM assignments WHERE workflow_id = ? AND run_id <> ? AND kind = ?"
            " AND provider_id = ? AND (finished_at IS NULL OR"
            " (outcome = 'completed' AND result <> '')) ORDER BY created_at",
            (workflow_id, run_id, kind, provider_id),
        )
        for r in self._matching(rows, job_id, job_attempt):
            result = self._result(r) if r["result"] else None
            if (r["finished_at"] is not None or r["outcome"] == HELD) and result is None:
                continue  # a kept result that does not open: nothing to take
            if r["finished_at"] is not None:  # delivered to its run, which recorded it
                return Adopted(r["assignment_id"], result), False
            now = self.clock()
            with self.db.transaction() as cur:
                if r["outcome"] == HELD:
                    won = cur.execute(
                        "UPDATE assignments SET finished_at = ?, outcome = 'completed'"
                        " WHERE assignment_id = ? AND finished_at IS NULL AND outcome = ?",
                        (now, r["assignment_id"], HELD),
                    )
                    if won == 1:
                        return Adopted(r["assignment_id"], result), False
                    lost = True
                    continue
                cur.execute(  # an earlier try of this step in this run, if any
                    "DELETE FROM assignments WHERE workflow_id = ? AND run_id = ?"
                    " AND activity_id = ?", (workflow_id, run_id, activity_id),
                )
                pickup_by = (r["pickup_by"] if r["handed_out_at"] is not None
                             else now + pickup_timeout_s)
                won = cur.execute(
                    "UPDATE assignments SET task_token = ?, run_id = ?, activity_id = ?,"
                    " attempt = ?, heartbeat_timeout_s = ?, pickup_by = ?"
                    " WHERE assignment_id = ? AND run_id = ? AND finished_at IS NULL"
                    " AND outcome <> ?",
                    (self._seal(r["assignment_id"], "task_token", task_token), run_id,
                     activity_id, attempt, heartbeat_timeout_s, pickup_by, r["assignment_id"],
                     r["run_id"], HELD),
                )
            if won == 1:
                return Adopted(r["assignment_id"], None), False
            lost = True
        return None, lost

    def tried(self, workflow_id: str, run_id: str, activity_id: str) -> list[str]:
        """The earlier tries of this step of this run that were published (a row is kept,
        finished or not, until forget_finished drops it a day later)."""
        return [r["assignment_id"] for r in self.db.query(
            "SELECT assignment_id FROM assignments WHERE workflow_id = ? AND run_id = ?"
            " AND activity_id = ?", (workflow_id, run_id, activity_id))]

    def reported(self, aid: str) -> dict[str, Any] | None:
        """The result its provider reported, kept as it completed (None: none, or it does
        not open). The API that kept it may have died before Temporal took it: a report
        tried again, or the step's next try in its run, delivers it once more."""
        rows = self.db.query("SELECT * FROM assignments WHERE assignment_id = ?"
                             " AND outcome = 'completed' AND result <> ''", (aid,))
        return self._result(rows[0]) if rows else None

    def begun(self, workflow_id: str, run_id: str, job_id: str, job_attempt: int) -> bool:
        """Whether an earlier run of the workflow handed this attempt's command to its
        provider (staging again would write under it)."""
        rows = self.db.query(
            "SELECT * FROM assignments WHERE workflow_id = ? AND run_id <> ?"
            " AND kind = 'execute_job' AND handed_out_at IS NOT NULL",
            (workflow_id, run_id),
        )
        return bool(self._matching(rows, job_id, job_attempt))

    def abandoned(self, workflow_id: str, run_id: str, kind: str, job_id: str,
                  job_attempt: int) -> bool:
        """Whether an earlier run of the workflow handed this step of the job's attempt out
        and it closed with no result for adopt to take (its agent told to stop once the
        reset's new run did not come within the API's grace, or lost, or failed): run
        again, it would run in that run's work directory, under its output keys."""
        rows = self.db.query(
            "SELECT * FROM assignments WHERE workflow_id = ? AND run_id <> ? AND kind = ?"
            " AND handed_out_at IS NOT NULL AND finished_at IS NOT NULL",
            (workflow_id, run_id, kind),
        )
        return bool(self._matching(rows, job_id, job_attempt))

    def kept(self, workflow_id: str, job_id: str, job_attempt: int, kind: str) -> bool:
        """Whether the result of this step of the job's attempt is kept for a new run of
        the workflow to take (adopt)."""
        rows = self.db.query(
            "SELECT * FROM assignments WHERE workflow_id = ? AND kind = ?"
            " AND result <> '' AND outcome IN ('completed', ?)", (workflow_id, kind, HELD),
        )
        return bool(self._matching(rows, job_id, job_attempt))

    def _matching(self, rows: list[dict[str, Any]], job_id: str, job_attempt: int
                  ) -> list[dict[str, Any]]:
        """The rows (that open) of this job's attempt."""
        opened = {a.assignment_id: a for a in self._opened(rows)}
        return [r for r in rows if (a := opened.get(r["assignment_id"])) is not None
                and a.request.get("job_id") == job_id
                and a.request.get("attempt") == job_attempt]

    def _result(self, r: dict[str, Any]) -> dict[str, Any] | None:
        """A kept result, or None where it does not open (then nothing is taken over)."""
        try:
            plain = self.cipher.open("assignments", "result", r["assignment_id"], r["result"])
        except RowSealError as err:
            log.warning("assignment result unreadable: %s", err)
            return None
        found: dict[str, Any] = json.loads(plain)
        return found

    def hold(self, aid: str) -> None:
        """Keep a completed step, whose run was reset before it took the result, open for
        the new run (adopt); if none takes it, forget_finished closes it as lapsed."""
        now = self.clock()  # (the database's clock is read outside the transaction)
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE assignments SET finished_at = NULL, outcome = ?, last_seen_at = ?"
                " WHERE assignment_id = ? AND outcome = 'completed'",
                (HELD, now, aid),
            )

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

    def silent(self) -> list[Assignment]:
        """Handed-out assignments whose provider went unheard for its heartbeat timeout
        while an API was up the whole time: some listener's row spans a stretch that long,
        from the provider's last word (or the API's start, if later) to its latest stamp.
        An outage of every API, or a restart, silences no one: the agent reconnects."""
        rows = self.db.query(
            "SELECT * FROM assignments a WHERE finished_at IS NULL"
            " AND handed_out_at IS NOT NULL AND outcome <> ? AND EXISTS (SELECT 1 FROM"
            " listeners l WHERE l.heard_at - (CASE WHEN a.last_seen_at > l.up_since"
            " THEN a.last_seen_at ELSE l.up_since END) > a.heartbeat_timeout_s)", (HELD,),
        )
        return self._opened(rows)

    def seen(self, aid: str) -> None:
        now = self.clock()
        with self.db.transaction() as cur:
            cur.execute("UPDATE assignments SET last_seen_at = ? WHERE assignment_id = ?",
                        (now, aid))

    def finish(self, aid: str, outcome: str, result: dict[str, Any] | None = None,
               state: str = "") -> bool:
        """Close the assignment, with the step's result if it completed (a reset's new run
        takes it: adopt); False if it was closed already (by anyone), or is no longer in
        `state`: "waiting" (not handed out) or "running" (handed out, no result held)."""
        only = {"": "", "waiting": " AND handed_out_at IS NULL",
                "running": f" AND handed_out_at IS NOT NULL AND outcome <> '{HELD}'"}[state]
        now = self.clock()
        with self.db.transaction() as cur:
            won = cur.execute(
                "UPDATE assignments SET finished_at = ?, outcome = ?, result = ?"
                " WHERE assignment_id = ? AND finished_at IS NULL" + only,
                (now, outcome, "" if result is None
                 else self._seal(aid, "result", json.dumps(result).encode()), aid),
            )
        return won == 1

    def reopen(self, aid: str, outcome: str) -> None:
        """Undo a finish as `outcome` whose delivery Temporal did not take (the RPC failed)."""
        with self.db.transaction() as cur:
            cur.execute("UPDATE assignments SET finished_at = NULL, outcome = ''"
                        " WHERE assignment_id = ? AND outcome = ?", (aid, outcome))

    def waiting(self) -> list[Assignment]:
        """Every assignment not yet handed out."""
        rows = self.db.query(
            "SELECT * FROM assignments WHERE finished_at IS NULL AND handed_out_at IS NULL"
        )
        return self._opened(rows)

    def forget_finished(self) -> None:
        """Close a held result no run took (a minute past its timeout) and what Temporal has
        long timed out, and drop rows finished long ago. A step still running is closed only
        past any outage grace its workflow may bear (MAX_OUTAGE_GRACE_S): while every API is
        away its agent goes on, and its step lives in Temporal for the heartbeat timeout plus
        that grace; closed sooner, the agent would be told to stop as the API came back, its
        run lost. (While an API is up, the watch fails a silent one: `silent`.)"""
        now = self.clock()
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE assignments SET finished_at = ?, outcome = 'lapsed'"
                " WHERE finished_at IS NULL AND handed_out_at IS NOT NULL"
                " AND last_seen_at + heartbeat_timeout_s + 60"
                " + (CASE WHEN outcome = ? THEN 0 ELSE ? END) < ?",
                (now, HELD, MAX_OUTAGE_GRACE_S, now),
            )
            cur.execute("DELETE FROM assignments WHERE finished_at IS NOT NULL"
                        " AND finished_at < ?", (now - KEEP_FINISHED_S,))
        self.listeners.forget_stamped_before(now - MAX_OUTAGE_GRACE_S)
