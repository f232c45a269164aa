"""The read-model projection: folds the event log into views, idempotently.

Views and the tracking position are written in one transaction, and the
position only moves forward from where this batch started, so two runners (or
a crash between batches) never apply an event twice or skip one. The whole
read model can be rebuilt from the log.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import Notification

from domain.node import DEFAULT_QUEUE, queue_config, split_queue
from domain.reputation import reputation, reputation_score
from infra.db import Cursor
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
VIEWS_VERSION = 10
CHANNEL = "gpgpu_views"  # PostgreSQL NOTIFY channel: every API replica wakes its subscribers
_META = ("timestamp", "originator_id", "originator_version", "originator_topic")

# The job state each event leaves the job in (None: state unchanged).
JOB_STATE_AFTER: dict[str, str | None] = {
    "JobSubmitted": "SUBMITTED",
    "JobRejected": "REJECTED",
    "FundsEscrowed": None,
    "JobQueued": "QUEUED",
    "GpusAllocated": "STAGING",
    "InputsStaged": None,
    "ExecutionStarted": "RUNNING",
    "ExecutionFinished": "UPLOADING",
    "OutputsUploaded": "VERIFYING",
    "ProviderLost": "QUEUED",
    "JobVerified": "SETTLING",
    "VerificationFailed": "SETTLING",
    "JobSettled": None,
    "ResultAccepted": None,
    "CheckSkipped": None,
    "RunUnplaced": None,
    "GpusReleased": None,
    "ReputationRecorded": None,
    "JobSucceeded": "SUCCEEDED",
    "JobFailed": "FAILED",
    "JobCancelled": "CANCELLED",
}
TERMINAL_EVENTS = ("JobSucceeded", "JobFailed", "JobRejected", "JobCancelled")


def event_data(event: Any) -> dict[str, Any]:
    return {
        k: (str(v) if isinstance(v, UUID) else v)
        for k, v in event.__dict__.items()
        if k not in _META
    }


# A provider row's columns that hold JSON, kept parsed while a batch folds.
PROVIDER_JSON = ("reservations", "reservation_clients", "outcomes", "outcome_times",
                 "suspended", "degraded")


@dataclass
class _Rows:
    """The view rows one batch has read or written, by aggregate id: an aggregate's next
    event in the same batch needs no query. Valid for one transaction only (another
    runner may apply the next batch)."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    ledger_seq: dict[str, int] = field(default_factory=dict)  # by account name
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Column changes not yet written, by (table, key column, key): one UPDATE per row and
    # batch, however many of the batch's events changed it.
    pending: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    # Rows to append (event histories, ledger entries), by INSERT statement: one
    # executemany each.
    appends: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    changed_providers: set[str] = field(default_factory=set)  # their JSON columns to write

    def update(self, table: str, key_column: str, key: str, changes: dict[str, Any]) -> None:
        self.pending.setdefault((table, key_column, key), {}).update(changes)

    def append(self, insert: str, row: tuple[Any, ...]) -> None:
        self.appends.setdefault(insert, []).append(row)

    def flush(self, cur: Cursor) -> None:
        for agg in self.changed_providers:  # their lists, written once, and the score
            kept = self.providers[agg]
            outcomes, times = kept["outcomes"], kept["outcome_times"]
            # The score as of the latest outcome; readers decay it to their own moment
            # (domain/reputation.py) from the outcomes and their times kept beside it.
            score = reputation(list(zip(outcomes, times, strict=True)), max(times, default=0.0))
            self.update("providers", "aggregate_id", agg, {
                **{column: json.dumps(kept[column], sort_keys=column == "degraded")
                   for column in PROVIDER_JSON},
                "reputation": score.score,
            })
        self.changed_providers.clear()
        for insert, rows in self.appends.items():
            cur.executemany(insert, rows)
        self.appends.clear()
        for (table, key_column, key), changes in self.pending.items():
            sets = ", ".join(f"{column} = ?" for column in changes)
            cur.execute(f"UPDATE {table} SET {sets} WHERE {key_column} = ?",
                        (*changes.values(), key))
        self.pending.clear()


class Projector:
    def __init__(self, app: Application[Any], db: ViewDB, batch_size: int = 2000):
        self.app, self.db, self.batch_size = app, db, batch_size
        # Called after each committed batch with the new position and the job events it added.
        self.listeners: list[Callable[[int, list[dict[str, Any]]], None]] = []
        self._added: list[dict[str, Any]] = []
        self._rows = _Rows()  # the view rows this batch read or wrote
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
        notifications = self.app.recorder.select_notifications(
            start=start, limit=self.batch_size, inclusive_of_start=False
        )
        if not notifications:
            return 0
        self._added = []
        try:
            with self.db.transaction() as cur:
                if not self._advance(cur, start, notifications[-1].id):
                    return 0  # another runner applied this batch first; its transaction wins
                self._rows = _Rows()
                with self.db.pipeline():  # PostgreSQL: writes go out without a round trip each
                    for n in notifications:
                        self._apply(cur, n.id, self.app.mapper.to_domain_event(n))
                    self._rows.flush(cur)
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
            kept = len(self._added)
            self._rows = _Rows()
            try:
                with self.db.transaction() as cur:
                    if not self._advance(cur, position, n.id):
                        return 0  # another runner is ahead; what this one did is committed
                    self._apply(cur, n.id, self.app.mapper.to_domain_event(n))
                    self._rows.flush(cur)
            except Exception as err:
                if transient(err):
                    raise
                del self._added[kept:]
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
        total = 0
        while applied := self.run_once():
            total += applied
        return total

    def rebuild(self) -> int:
        """Drop every view and project the whole log again."""
        with self.db.transaction() as cur:
            for table in VIEW_TABLES:
                cur.execute(f"DELETE FROM {table}")
            cur.execute("UPDATE tracking SET position = 0 WHERE name = ?", (NAME,))
        self._position = None
        return self.catch_up()

    # Folding

    def _apply(self, cur: Cursor, nid: int, event: Any) -> None:
        kind, _, etype = type(event).__qualname__.rpartition(".")
        at = event.timestamp.isoformat()
        data = event_data(event)
        agg = str(event.originator_id)
        if kind == "Job":
            self._job(cur, nid, agg, etype, at, data)
        elif kind == "Provider":
            self._provider(cur, nid, agg, etype, at, data)
        elif kind == "Node":
            self._node(cur, agg, etype, data)
        elif kind == "Account":
            if etype == "AccountOpened":
                cur.execute(
                    "INSERT INTO accounts (name, aggregate_id, balance_micro) VALUES (?, ?, 0)",
                    (data["name"], agg),
                )
                self._rows.accounts[agg] = {"name": data["name"], "balance_micro": 0}
                self._rows.ledger_seq[data["name"]] = 0  # a new account has no entries
            elif etype == "EntryPosted":
                self._entry(cur, agg, at, data)

    def _node(self, cur: Cursor, agg: str, etype: str, data: dict[str, Any]) -> None:
        if etype == "NodeRegistered":
            cur.execute(
                "INSERT INTO nodes (node_id, aggregate_id, region, operator) VALUES (?, ?, ?, ?)",
                (data["node_id"], agg, data["region"], data["operator"]),
            )
            return
        row = self._rows.nodes.get(agg) or cur.one(
            "SELECT queues, provider_ids FROM nodes WHERE aggregate_id = ?", (agg,)
        )
        if row is None:
            log.error("event %s for unknown node aggregate %s", etype, agg)
            return
        queues, providers = json.loads(row["queues"]), json.loads(row["provider_ids"])
        if etype == "QueueConfigured":  # events before v2 of Node carry only the models
            queues[data["name"]] = queue_config(
                data["gpu_models"], data.get("priority_levels", 1),
                data.get("max_gpus_per_client", 0), data.get("fair_share", True),
            )
        elif etype == "QueueRemoved":
            queues.pop(data["name"], None)
        elif etype == "ProviderJoinedNode":
            providers.append(data["provider_id"])
        row = self._rows.nodes[agg] = {"queues": json.dumps(queues),
                                        "provider_ids": json.dumps(providers)}
        self._rows.update("nodes", "aggregate_id", agg, row)

    def _entry(self, cur: Cursor, agg: str, at: str, data: dict[str, Any]) -> None:
        acct = self._rows.accounts.get(agg)
        if acct is None:  # the account and its last entry's seq, in one round trip
            acct = cur.one(
                "SELECT name, balance_micro, (SELECT COALESCE(MAX(seq), 0) FROM ledger_entries"
                " WHERE account = accounts.name) AS last_seq FROM accounts"
                " WHERE aggregate_id = ?", (agg,),
            )
            if acct is None:
                log.error("entry for unknown account aggregate %s", agg)
                return
            self._rows.ledger_seq[acct["name"]] = acct["last_seq"]
        name, balance = acct["name"], acct["balance_micro"] + data["amount_micro"]
        seq = self._rows.ledger_seq[name] + 1
        self._rows.accounts[agg] = {"name": name, "balance_micro": balance}
        self._rows.ledger_seq[name] = seq
        self._rows.update("accounts", "aggregate_id", agg, {"balance_micro": balance})
        self._rows.append(
            "INSERT INTO ledger_entries (account, seq, transfer_id, amount_micro, balance_micro,"
            " counterparty, kind, memo, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (name, seq, data["transfer_id"], data["amount_micro"], balance,
             data["counterparty"], data["kind"], data["memo"], at),
        )

    def _job(self, cur: Cursor, nid: int, agg: str, etype: str, at: str, data: dict[str, Any]):
        if etype == "JobSubmitted":
            spec = data["spec"]
            node, queue = split_queue(spec.get("queue", DEFAULT_QUEUE))
            cur.execute(
                "INSERT INTO jobs (job_id, aggregate_id, client_id, name, state, max_cost_micro,"
                " submitted_at, updated_at, spec, last_seq, queue, priority, gpus, timeout_s)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
                (
                    data["job_id"], agg, data["client_id"], spec["name"], "SUBMITTED",
                    data["max_cost_micro"], at, at, json.dumps(spec), f"{node}/{queue}",
                    spec.get("priority", 0), spec.get("resources", {}).get("gpus", 1),
                    int(spec.get("timeout", 600)),
                ),
            )
            data = {k: v for k, v in data.items() if k != "spec"}
            self._rows.jobs[agg] = {"job_id": data["job_id"], "last_seq": 0,
                                    "queued_position": None, "provider_id": None}
        job = self._rows.jobs.get(agg) or cur.one(
            "SELECT job_id, last_seq, queued_position, provider_id FROM jobs"
            " WHERE aggregate_id = ?", (agg,)
        )
        if job is None:
            log.error("event %s for unknown job aggregate %s", etype, agg)
            return
        job_id, seq = job["job_id"], job["last_seq"] + 1
        job = self._rows.jobs[agg] = {**job, "last_seq": seq}
        self._stream_event("job", job_id, seq, nid, etype, at, data)
        changes: dict[str, Any] = {"last_seq": seq, "updated_at": at}
        state = JOB_STATE_AFTER.get(etype)
        if state:
            changes["state"] = state
        if etype in ("JobRejected", "JobFailed", "JobCancelled", "JobVerified",
                     "VerificationFailed"):
            changes["reason"] = data["reason"]
        elif etype == "JobQueued":
            changes.update(attempt=data["attempt"], provider_id=None, allocated_at=None)
            if job["queued_position"] is None:
                changes["queued_position"] = job["queued_position"] = nid
        elif etype == "GpusAllocated":
            changes["allocated_at"] = at
            # The job's provider is its run's: a check run, a verifier or a tie-break placed
            # while the job has one does not replace it (nor does its loss clear it).
            if job["provider_id"] is None:
                changes["provider_id"] = data["provider_id"]
        elif etype == "ProviderLost":
            changes["allocated_at"] = None
            if job["provider_id"] == data["provider_id"]:
                changes["provider_id"] = None
        elif etype in ("OutputsUploaded", "ResultAccepted"):
            # The latest upload until verification accepts one run's outputs as the job's.
            changes["outputs"] = json.dumps(data["manifest"])
            if etype == "ResultAccepted" and data.get("provider_id"):
                # The job's provider is the one whose result was accepted, not the last
                # one allocated (a check run, a tie-break).
                changes["provider_id"] = data["provider_id"]
        elif etype == "JobSettled":
            changes["cost_micro"] = data["charged_micro"]
        if "provider_id" in changes:
            job["provider_id"] = changes["provider_id"]
        self._rows.update("jobs", "job_id", job_id, changes)

    def _stream_event(
        self, kind: str, key: str, seq: int, nid: int, etype: str, at: str, data: dict[str, Any]
    ) -> None:
        """Append to a job's or provider's event history, and hand it to live subscribers."""
        row = {f"{kind}_id": key, "seq": seq, "notification_id": nid, "type": etype, "at": at,
               "data": json.dumps(data)}
        self._rows.append(
            f"INSERT INTO {kind}_events ({kind}_id, seq, notification_id, type, at, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            tuple(row.values()),
        )
        self._added.append({**row, "stream": f"{kind}:{key}"})

    def _provider(
        self, cur: Cursor, nid: int, agg: str, etype: str, at: str, data: dict[str, Any]
    ) -> None:
        if etype == "ProviderRegistered":
            cur.execute(
                "INSERT INTO providers (provider_id, aggregate_id, region, status, price_micro,"
                " gpus, reputation, updated_at) VALUES (?, ?, ?, 'online', ?, ?, ?, ?)",
                (
                    data["provider_id"], agg, data["region"], data["price_per_gpu_hour_micro"],
                    json.dumps(data["gpus"]), reputation_score([]), at,
                ),
            )
        kept = self._rows.providers.get(agg)
        if kept is None:
            row = cur.one(
                f"SELECT provider_id, last_seq, {', '.join(PROVIDER_JSON)} FROM providers"
                " WHERE aggregate_id = ?", (agg,),
            )
            if row is None:
                log.error("event %s for unknown provider aggregate %s", etype, agg)
                return
            kept = self._rows.providers[agg] = {
                "provider_id": row["provider_id"], "last_seq": row["last_seq"],
                **{column: json.loads(row[column]) for column in PROVIDER_JSON},
            }
        seq = kept["last_seq"] = kept["last_seq"] + 1
        self._stream_event("provider", kept["provider_id"], seq, nid, etype, at, data)
        changes: dict[str, Any] = {"updated_at": at, "last_seq": seq}
        if etype == "ProviderRejoined":
            changes.update(region=data["region"], price_micro=data["price_per_gpu_hour_micro"],
                           gpus=json.dumps(data["gpus"]), status="online", status_reason="")
        elif etype == "RuntimesDeclared":
            changes["runtimes"] = json.dumps(data["runtimes"])
        elif etype == "SandboxDeclared":
            changes["sandbox"] = data["sandbox"]
        elif etype in ("ProviderMarkedLost", "ProviderWentOffline"):
            changes.update(status="lost" if etype == "ProviderMarkedLost" else "offline",
                           status_reason=data["reason"])
        elif etype == "ProviderCameOnline":
            changes.update(status="online", status_reason="")
        elif etype == "PriceChanged":
            changes["price_micro"] = data["price_per_gpu_hour_micro"]
        elif etype == "GpusReserved":
            kept["reservations"][data["job_id"]] = data["gpu_indexes"]
            kept["reservation_clients"][data["job_id"]] = data.get("client_id", "")
        elif etype == "GpusReleased":
            kept["reservations"].pop(data["job_id"], None)
            kept["reservation_clients"].pop(data["job_id"], None)
        elif etype == "GpuSuspended":
            kept["suspended"] = sorted({*kept["suspended"], data["index"]})
        elif etype == "GpuResumed":
            kept["suspended"] = [i for i in kept["suspended"] if i != data["index"]]
        elif etype == "GpuDegraded":
            kept["degraded"][str(data["index"])] = data["reason"]
        elif etype == "GpuRecovered":
            kept["degraded"].pop(str(data["index"]), None)
        elif etype == "ReputationRecorded":
            kept["outcomes"].append(data["outcome"])
            kept["outcome_times"].append(data["at"])
        self._rows.update("providers", "aggregate_id", agg, changes)
        self._rows.changed_providers.add(agg)
