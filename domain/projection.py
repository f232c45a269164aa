"""The read-model projection: folds the event log into views, idempotently.

Views and the tracking position are written in one transaction, and the
position only moves forward from where this batch started, so two runners (or
a crash between batches) never apply an event twice or skip one. The whole
read model can be rebuilt from the log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID

from eventsourcing.application import Application

from domain.node import DEFAULT_QUEUE, queue_config, split_queue
from domain.reputation import reputation, reputation_score
from infra.db import VIEW_TABLES, Cursor, ViewDB

log = logging.getLogger(__name__)

NAME = "views"
# Bump when the views' tables or folding change: the next start rebuilds them from the log.
VIEWS_VERSION = 8
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


class Projector:
    def __init__(self, app: Application[Any], db: ViewDB, batch_size: int = 500):
        self.app, self.db, self.batch_size = app, db, batch_size
        # Called after each committed batch with the new position and the job events it added.
        self.listeners: list[Callable[[int, list[dict[str, Any]]], None]] = []
        self._added: list[dict[str, Any]] = []
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
        """Project the next batch of events; returns how many were applied."""
        # Where this runner's last batch left the position (one query less per poll). Stale
        # only if another runner moved it: then the conditional update below finds out.
        start = self._position if self._position is not None else self.position()
        notifications = self.app.recorder.select_notifications(
            start=start, limit=self.batch_size, inclusive_of_start=False
        )
        if not notifications:
            return 0
        self._added = []
        with self.db.transaction() as cur:
            moved = cur.execute(
                "UPDATE tracking SET position = ? WHERE name = ? AND position = ?",
                (notifications[-1].id, NAME, start),
            )
            if moved != 1:
                self._position = None  # read it again next time
                return 0  # another runner applied this batch first; its transaction wins
            for n in notifications:
                self._apply(cur, n.id, self.app.mapper.to_domain_event(n))
            if self.db.is_postgres:
                cur.execute("SELECT pg_notify(?, ?)", (CHANNEL, str(notifications[-1].id)))
        last = self._position = notifications[-1].id
        for listener in self.listeners:
            listener(last, self._added)
        return len(notifications)

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
            elif etype == "EntryPosted":
                self._entry(cur, agg, at, data)

    def _node(self, cur: Cursor, agg: str, etype: str, data: dict[str, Any]) -> None:
        if etype == "NodeRegistered":
            cur.execute(
                "INSERT INTO nodes (node_id, aggregate_id, region, operator) VALUES (?, ?, ?, ?)",
                (data["node_id"], agg, data["region"], data["operator"]),
            )
            return
        row = cur.one("SELECT queues, provider_ids FROM nodes WHERE aggregate_id = ?", (agg,))
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
        cur.execute(
            "UPDATE nodes SET queues = ?, provider_ids = ? WHERE aggregate_id = ?",
            (json.dumps(queues), json.dumps(providers), agg),
        )

    def _entry(self, cur: Cursor, agg: str, at: str, data: dict[str, Any]) -> None:
        cur.execute(
            "UPDATE accounts SET balance_micro = balance_micro + ? WHERE aggregate_id = ?",
            (data["amount_micro"], agg),
        )
        acct = cur.one("SELECT name, balance_micro FROM accounts WHERE aggregate_id = ?", (agg,))
        if acct is None:
            log.error("entry for unknown account aggregate %s", agg)
            return
        last = cur.one("SELECT COALESCE(MAX(seq), 0) AS seq FROM ledger_entries WHERE account = ?",
                       (acct["name"],))
        cur.execute(
            "INSERT INTO ledger_entries (account, seq, transfer_id, amount_micro, balance_micro,"
            " counterparty, kind, memo, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (acct["name"], (last["seq"] if last else 0) + 1, data["transfer_id"],
             data["amount_micro"], acct["balance_micro"], data["counterparty"], data["kind"],
             data["memo"], at),
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
        job = cur.one("SELECT job_id, last_seq, queued_position FROM jobs WHERE aggregate_id = ?",
                      (agg,))
        if job is None:
            log.error("event %s for unknown job aggregate %s", etype, agg)
            return
        job_id, seq = job["job_id"], job["last_seq"] + 1
        self._stream_event(cur, "job", job_id, seq, nid, etype, at, data)
        sets, params = ["last_seq = ?", "updated_at = ?"], list[Any]([seq, at])
        state = JOB_STATE_AFTER.get(etype)
        if state:
            sets.append("state = ?")
            params.append(state)
        if etype in ("JobRejected", "JobFailed", "JobCancelled", "JobVerified",
                     "VerificationFailed"):
            sets.append("reason = ?")
            params.append(data["reason"])
        elif etype == "JobQueued":
            sets += ["attempt = ?", "provider_id = NULL", "allocated_at = NULL"]
            params.append(data["attempt"])
            if job["queued_position"] is None:
                sets.append("queued_position = ?")
                params.append(nid)
        elif etype == "GpusAllocated":
            sets += ["provider_id = ?", "allocated_at = ?"]
            params += [data["provider_id"], at]
        elif etype == "ProviderLost":
            sets += ["provider_id = NULL", "allocated_at = NULL"]
        elif etype in ("OutputsUploaded", "ResultAccepted"):
            # The latest upload until verification accepts one run's outputs as the job's.
            sets.append("outputs = ?")
            params.append(json.dumps(data["manifest"]))
        elif etype == "JobSettled":
            sets.append("cost_micro = ?")
            params.append(data["charged_micro"])
        cur.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE job_id = ?", (*params, job_id))

    def _stream_event(
        self, cur: Cursor, kind: str, key: str, seq: int, nid: int, etype: str, at: str,
        data: dict[str, Any],
    ) -> None:
        """Append to a job's or provider's event history, and hand it to live subscribers."""
        row = {f"{kind}_id": key, "seq": seq, "notification_id": nid, "type": etype, "at": at,
               "data": json.dumps(data)}
        cur.execute(
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
        row = cur.one(
            "SELECT provider_id, reservations, reservation_clients, outcomes, outcome_times,"
            " suspended,"
            " degraded, last_seq FROM providers WHERE aggregate_id = ?", (agg,),
        )
        if row is None:
            log.error("event %s for unknown provider aggregate %s", etype, agg)
            return
        seq = row["last_seq"] + 1
        self._stream_event(cur, "provider", row["provider_id"], seq, nid, etype, at, data)
        reservations = json.loads(row["reservations"])
        clients = json.loads(row["reservation_clients"])
        outcomes = json.loads(row["outcomes"])
        times: list[float] = json.loads(row["outcome_times"])
        suspended: list[int] = json.loads(row["suspended"])
        degraded: dict[str, str] = json.loads(row["degraded"])
        sets, params = ["updated_at = ?", "last_seq = ?"], list[Any]([at, seq])
        if etype == "ProviderRejoined":
            sets += ["region = ?", "price_micro = ?", "gpus = ?", "status = 'online'",
                     "status_reason = ''"]
            params += [data["region"], data["price_per_gpu_hour_micro"], json.dumps(data["gpus"])]
        elif etype == "RuntimesDeclared":
            sets.append("runtimes = ?")
            params.append(json.dumps(data["runtimes"]))
        elif etype in ("ProviderMarkedLost", "ProviderWentOffline"):
            sets += ["status = ?", "status_reason = ?"]
            params += ["lost" if etype == "ProviderMarkedLost" else "offline", data["reason"]]
        elif etype == "ProviderCameOnline":
            sets += ["status = 'online'", "status_reason = ''"]
        elif etype == "PriceChanged":
            sets.append("price_micro = ?")
            params.append(data["price_per_gpu_hour_micro"])
        elif etype == "GpusReserved":
            reservations[data["job_id"]] = data["gpu_indexes"]
            clients[data["job_id"]] = data.get("client_id", "")
        elif etype == "GpusReleased":
            reservations.pop(data["job_id"], None)
            clients.pop(data["job_id"], None)
        elif etype == "GpuSuspended":
            suspended = sorted({*suspended, data["index"]})
        elif etype == "GpuResumed":
            suspended = [i for i in suspended if i != data["index"]]
        elif etype == "GpuDegraded":
            degraded[str(data["index"])] = data["reason"]
        elif etype == "GpuRecovered":
            degraded.pop(str(data["index"]), None)
        elif etype == "ReputationRecorded":
            outcomes.append(data["outcome"])
            times.append(data["at"])
        # The score as of the latest outcome; readers decay it to their own moment
        # (domain/reputation.py) from the outcomes and their times kept beside it.
        score = reputation(list(zip(outcomes, times, strict=True)), max(times, default=0.0))
        sets += ["reservations = ?", "reservation_clients = ?", "outcomes = ?", "reputation = ?",
                 "suspended = ?", "degraded = ?", "outcome_times = ?"]
        params += [json.dumps(reservations), json.dumps(clients), json.dumps(outcomes),
                   score.score, json.dumps(suspended),
                   json.dumps(degraded, sort_keys=True), json.dumps(times)]
        cur.execute(f"UPDATE providers SET {', '.join(sets)} WHERE aggregate_id = ?",
                    (*params, agg))
