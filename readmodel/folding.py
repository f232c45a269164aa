"""Folding: what each domain event changes in the views, dispatched on the event's class.

A `Fold` applies one batch's events inside the projector's transaction; `_Rows` keeps
the rows the batch read or wrote, so an aggregate's next event in the same batch needs
no query and each changed row is written once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.job import Job, env_names_only
from domain.ledger import Account
from domain.node import DEFAULT_QUEUE, Node, queue_config, split_queue
from domain.provider import Provider
from domain.reputation import last_scored_at, reputation, reputation_score
from domain.states import STATE_AFTER
from infra.db import Cursor

log = logging.getLogger(__name__)

_META = ("timestamp", "originator_id", "originator_version", "originator_topic")


def event_data(event: Any) -> dict[str, Any]:
    return {
        k: (str(v) if isinstance(v, UUID) else v)
        for k, v in event.__dict__.items()
        if k not in _META
    }


def event_class(aggregate: type[Aggregate], name: str) -> type[Aggregate.Event]:
    """The class `@event(name)` made on the aggregate (an error at import if there is none)."""
    cls = getattr(aggregate, name)
    if not (isinstance(cls, type) and issubclass(cls, Aggregate.Event)):
        raise TypeError(f"{aggregate.__name__}.{name} is not an event class")
    return cls


@dataclass(frozen=True)
class Event:
    """One event as the folds read it."""

    nid: int  # its notification id: its place in the log
    agg: str  # its aggregate's id
    type: str  # its class's name, as the event histories show it
    at: str  # ISO 8601
    data: dict[str, Any]


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
            # The score as of the latest scored outcome (an `outvoted` one moves nothing);
            # readers decay it to their own moment (domain/reputation.py) from the
            # outcomes and their times kept beside it.
            pairs = list(zip(outcomes, times, strict=True))
            score = reputation(pairs, last_scored_at(pairs, 0.0))
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


class Fold:
    """Applies one batch's events to the views, each through its class's handler; events of
    a class no view shows (identity, canaries) pass by."""

    def __init__(self, cur: Cursor) -> None:
        self.cur = cur
        self.rows = _Rows()
        # The job and provider history rows this batch added, for live subscribers.
        self.added: list[dict[str, Any]] = []

    def apply(self, nid: int, event: Any) -> None:
        handler = HANDLERS.get(type(event))
        if handler is not None:
            handler(self, Event(nid, str(event.originator_id), type(event).__name__,
                                event.timestamp.isoformat(), event_data(event)))

    def flush(self) -> None:
        self.rows.flush(self.cur)

    # Accounts

    def account_opened(self, e: Event) -> None:
        self.cur.execute(
            "INSERT INTO accounts (name, aggregate_id, balance_micro) VALUES (?, ?, 0)",
            (e.data["name"], e.agg),
        )
        self.rows.accounts[e.agg] = {"name": e.data["name"], "balance_micro": 0}
        self.rows.ledger_seq[e.data["name"]] = 0  # a new account has no entries

    def entry_posted(self, e: Event) -> None:
        acct = self.rows.accounts.get(e.agg)
        if acct is None:  # the account and its last entry's seq, in one round trip
            acct = self.cur.one(
                "SELECT name, balance_micro, (SELECT COALESCE(MAX(seq), 0) FROM ledger_entries"
                " WHERE account = accounts.name) AS last_seq FROM accounts"
                " WHERE aggregate_id = ?", (e.agg,),
            )
            if acct is None:
                log.error("entry for unknown account aggregate %s", e.agg)
                return
            self.rows.ledger_seq[acct["name"]] = acct["last_seq"]
        data = e.data
        name, balance = acct["name"], acct["balance_micro"] + data["amount_micro"]
        seq = self.rows.ledger_seq[name] + 1
        self.rows.accounts[e.agg] = {"name": name, "balance_micro": balance}
        self.rows.ledger_seq[name] = seq
        self.rows.update("accounts", "aggregate_id", e.agg, {"balance_micro": balance})
        self.rows.append(
            "INSERT INTO ledger_entries (account, seq, transfer_id, amount_micro, balance_micro,"
            " counterparty, kind, memo, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (name, seq, data["transfer_id"], data["amount_micro"], balance,
             data["counterparty"], data["kind"], data["memo"], e.at),
        )

    # Nodes

    def node_registered(self, e: Event) -> None:
        self.cur.execute(
            "INSERT INTO nodes (node_id, aggregate_id, region, operator) VALUES (?, ?, ?, ?)",
            (e.data["node_id"], e.agg, e.data["region"], e.data["operator"]),
        )

    def _node(self, e: Event, change: Callable[[dict[str, Any], list[str]], None]) -> None:
        row = self.rows.nodes.get(e.agg) or self.cur.one(
            "SELECT queues, provider_ids FROM nodes WHERE aggregate_id = ?", (e.agg,)
        )
        if row is None:
            log.error("event %s for unknown node aggregate %s", e.type, e.agg)
            return
        queues, providers = json.loads(row["queues"]), json.loads(row["provider_ids"])
        change(queues, providers)
        row = self.rows.nodes[e.agg] = {"queues": json.dumps(queues),
                                        "provider_ids": json.dumps(providers)}
        self.rows.update("nodes", "aggregate_id", e.agg, row)

    def queue_configured(self, e: Event) -> None:
        data = e.data  # events before v2 of Node carry only the models

        def change(queues: dict[str, Any], _: list[str]) -> None:
            queues[data["name"]] = queue_config(
                data["gpu_models"], data.get("priority_levels", 1),
                data.get("max_gpus_per_client", 0), data.get("fair_share", True),
            )
        self._node(e, change)

    def queue_removed(self, e: Event) -> None:
        self._node(e, lambda queues, _: queues.pop(e.data["name"], None))

    def provider_joined_node(self, e: Event) -> None:
        self._node(e, lambda _, providers: providers.append(e.data["provider_id"]))

    # Jobs: every event is appended to the job's history and may move its state
    # (domain.states.STATE_AFTER); some change more of its row (JOB_CHANGES).

    def job_submitted(self, e: Event) -> None:
        data = e.data
        # The env's names alone, also from an event recorded before envs were sealed.
        spec = env_names_only(data["spec"])
        node, queue = split_queue(spec.get("queue", DEFAULT_QUEUE))
        self.cur.execute(
            "INSERT INTO jobs (job_id, aggregate_id, client_id, name, state, max_cost_micro,"
            " submitted_at, updated_at, spec, last_seq, queue, priority, gpus, timeout_s)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
            (
                data["job_id"], e.agg, data["client_id"], spec["name"], "SUBMITTED",
                data["max_cost_micro"], e.at, e.at, json.dumps(spec), f"{node}/{queue}",
                spec.get("priority", 0), spec.get("resources", {}).get("gpus", 1),
                int(spec.get("timeout", 600)),
            ),
        )
        self.rows.jobs[e.agg] = {"job_id": data["job_id"], "last_seq": 0,
                                 "queued_position": None, "provider_id": None}
        self.job(Event(e.nid, e.agg, e.type, e.at,
                       {k: v for k, v in data.items() if k not in ("spec", "sealed_env")}))

    def job(self, e: Event) -> None:
        job = self.rows.jobs.get(e.agg) or self.cur.one(
            "SELECT job_id, last_seq, queued_position, provider_id FROM jobs"
            " WHERE aggregate_id = ?", (e.agg,)
        )
        if job is None:
            log.error("event %s for unknown job aggregate %s", e.type, e.agg)
            return
        job_id, seq = job["job_id"], job["last_seq"] + 1
        job = self.rows.jobs[e.agg] = {**job, "last_seq": seq}
        self._history("job", job_id, seq, e)
        changes: dict[str, Any] = {"last_seq": seq, "updated_at": e.at}
        state = STATE_AFTER.get(e.type)
        if state is not None:
            changes["state"] = state.value
        more = JOB_CHANGES.get(e.type)
        if more is not None:
            changes.update(more(job, e))
        if "provider_id" in changes:
            job["provider_id"] = changes["provider_id"]
        self.rows.update("jobs", "job_id", job_id, changes)

    def _history(self, kind: str, key: str, seq: int, e: Event) -> None:
        """Append to a job's or provider's event history, and hand it to live subscribers."""
        row = {f"{kind}_id": key, "seq": seq, "notification_id": e.nid, "type": e.type,
               "at": e.at, "data": json.dumps(e.data)}
        self.rows.append(
            f"INSERT INTO {kind}_events ({kind}_id, seq, notification_id, type, at, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            tuple(row.values()),
        )
        self.added.append({**row, "stream": f"{kind}:{key}"})

    # Providers: every event is appended to the provider's history; PROVIDER_CHANGES
    # say what else it changes (the row's columns, or its lists kept parsed in `kept`).

    def provider_registered(self, e: Event) -> None:
        data = e.data
        self.cur.execute(
            "INSERT INTO providers (provider_id, aggregate_id, region, status, price_micro,"
            " gpus, reputation, updated_at) VALUES (?, ?, ?, 'online', ?, ?, ?, ?)",
            (
                data["provider_id"], e.agg, data["region"], data["price_per_gpu_hour_micro"],
                json.dumps(data["gpus"]), reputation_score([]), e.at,
            ),
        )
        self.provider(e)

    def provider(self, e: Event) -> None:
        kept = self.rows.providers.get(e.agg)
        if kept is None:
            row = self.cur.one(
                f"SELECT provider_id, last_seq, {', '.join(PROVIDER_JSON)} FROM providers"
                " WHERE aggregate_id = ?", (e.agg,),
            )
            if row is None:
                log.error("event %s for unknown provider aggregate %s", e.type, e.agg)
                return
            kept = self.rows.providers[e.agg] = {
                "provider_id": row["provider_id"], "last_seq": row["last_seq"],
                **{column: json.loads(row[column]) for column in PROVIDER_JSON},
            }
        seq = kept["last_seq"] = kept["last_seq"] + 1
        self._history("provider", kept["provider_id"], seq, e)
        changes: dict[str, Any] = {"updated_at": e.at, "last_seq": seq}
        more = PROVIDER_CHANGES.get(e.type)
        if more is not None:
            changes.update(more(kept, e.data))
        self.rows.update("providers", "aggregate_id", e.agg, changes)
        self.rows.changed_providers.add(e.agg)


# What a job event changes in the job's row besides its history, seq and state.
JobChange = Callable[[dict[str, Any], Event], dict[str, Any]]


def _reason(job: dict[str, Any], e: Event) -> dict[str, Any]:
    return {"reason": e.data["reason"]}


def _queued(job: dict[str, Any], e: Event) -> dict[str, Any]:
    changes = {"attempt": e.data["attempt"], "provider_id": None, "allocated_at": None}
    if job["queued_position"] is None:
        changes["queued_position"] = job["queued_position"] = e.nid
    return changes


def _outputs(job: dict[str, Any], e: Event) -> dict[str, Any]:
    # The latest upload until verification accepts one run's outputs as the job's.
    return {"outputs": json.dumps(e.data["manifest"])}


def _allocated(job: dict[str, Any], e: Event) -> dict[str, Any]:
    # The job's provider is its run's: a check run, a verifier or a tie-break placed while
    # the job has one does not replace it (nor does its loss clear it).
    if job["provider_id"] is None:
        return {"provider_id": e.data["provider_id"], "allocated_at": e.at}
    return {"allocated_at": e.at}


def _lost(job: dict[str, Any], e: Event) -> dict[str, Any]:
    if job["provider_id"] == e.data["provider_id"]:
        return {"provider_id": None, "allocated_at": None}
    return {"allocated_at": None}


def _accepted(job: dict[str, Any], e: Event) -> dict[str, Any]:
    changes = _outputs(job, e)
    if e.data.get("provider_id"):
        # The job's provider is the one whose result was accepted, not the last one
        # allocated (a check run, a tie-break).
        changes["provider_id"] = e.data["provider_id"]
    return changes


JOB_CHANGES: dict[str, JobChange] = {
    "JobRejected": _reason, "JobFailed": _reason, "JobCancelled": _reason,
    "JobVerified": _reason, "VerificationFailed": _reason,
    "JobQueued": _queued,
    "GpusAllocated": _allocated,
    "ProviderLost": _lost,
    "RunFailed": _lost,
    "OutputsUploaded": _outputs,
    "ResultAccepted": _accepted,
    "JobSettled": lambda _, e: {"cost_micro": e.data["charged_micro"]},
}

# What a provider event changes besides its history: the row's columns it returns, and
# `kept` (the JSON lists, written once per batch) in place.
ProviderChange = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


def _rejoined(kept: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    return {"region": data["region"], "price_micro": data["price_per_gpu_hour_micro"],
            "gpus": json.dumps(data["gpus"]), "status": "online", "status_reason": ""}


def _reserved(kept: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    kept["reservations"][data["job_id"]] = data["gpu_indexes"]
    kept["reservation_clients"][data["job_id"]] = data.get("client_id", "")
    return {}


def _released(kept: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    kept["reservations"].pop(data["job_id"], None)
    kept["reservation_clients"].pop(data["job_id"], None)
    return {}


def _suspended(kept: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    kept["suspended"] = sorted({*kept["suspended"], data["index"]})
    return {}


def _resumed(kept: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    kept["suspended"] = [i for i in kept["suspended"] if i != data["index"]]
    return {}


def _degraded(kept: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    kept["degraded"][str(data["index"])] = data["reason"]
    return {}


def _recovered(kept: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    kept["degraded"].pop(str(data["index"]), None)
    return {}


def _outcome(kept: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    kept["outcomes"].append(data["outcome"])
    kept["outcome_times"].append(data["at"])
    return {}


PROVIDER_CHANGES: dict[str, ProviderChange] = {
    "ProviderRejoined": _rejoined,
    "RuntimesDeclared": lambda _, data: {"runtimes": json.dumps(data["runtimes"])},
    "SandboxDeclared": lambda _, data: {"sandbox": data["sandbox"]},
    "ProviderMarkedLost": lambda _, data: {"status": "lost", "status_reason": data["reason"]},
    "ProviderWentOffline": lambda _, data: {"status": "offline",
                                            "status_reason": data["reason"]},
    "ProviderCameOnline": lambda _, data: {"status": "online", "status_reason": ""},
    "PriceChanged": lambda _, data: {"price_micro": data["price_per_gpu_hour_micro"]},
    "GpusReserved": _reserved,
    "GpusReleased": _released,
    "GpuSuspended": _suspended,
    "GpuResumed": _resumed,
    "GpuDegraded": _degraded,
    "GpuRecovered": _recovered,
    "ReputationRecorded": _outcome,
}

# The provider events the views fold (those with no change past the history included).
PROVIDER_EVENTS = ("ProviderRegistered", *PROVIDER_CHANGES)

Handler = Callable[[Fold, Event], None]

# The handler of each event class the views show. Job's and Provider's GpusReleased and
# ReputationRecorded are different classes, each with its own handler.
HANDLERS: dict[type[Aggregate.Event], Handler] = {
    event_class(Account, "AccountOpened"): Fold.account_opened,
    Account.EntryPosted: Fold.entry_posted,
    event_class(Node, "NodeRegistered"): Fold.node_registered,
    event_class(Node, "QueueConfigured"): Fold.queue_configured,
    event_class(Node, "QueueRemoved"): Fold.queue_removed,
    event_class(Node, "ProviderJoinedNode"): Fold.provider_joined_node,
    **{event_class(Job, name): Fold.job for name in STATE_AFTER},
    event_class(Job, "JobSubmitted"): Fold.job_submitted,
    **{event_class(Provider, name): Fold.provider for name in PROVIDER_EVENTS},
    event_class(Provider, "ProviderRegistered"): Fold.provider_registered,
}
