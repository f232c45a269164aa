"""Folding: what each domain event changes in the views, dispatched on the event's class.

A `Fold` applies one batch's events inside the projector's transaction; `BatchRows` keeps
the rows the batch read or wrote, so an aggregate's next event in the same batch needs
no query and each changed row is written once (readmodel/batchrows.py). What each event
changes in its row is readmodel/changes.py; reading stored events, readmodel/decoding.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import JSONTranscoder, Mapper, Notification
from eventsourcing.utils import resolve_topic

from domain.job import Job, env_names_only
from domain.ledger import Account
from domain.node import DEFAULT_QUEUE, Node, queue_config, split_queue
from domain.provider import Provider
from domain.reputation import reputation_score
from domain.states import STATE_AFTER
from infra.db import Cursor
from readmodel.batchrows import PROVIDER_JSON, BatchRows
from readmodel.changes import JOB_CHANGES, PROVIDER_CHANGES, PROVIDER_EVENTS
from readmodel.decoding import Event, event_class, event_data, stored_event

log = logging.getLogger(__name__)

def read_events(notifications: Sequence[Notification], mapper: Mapper[Any]) -> list[Read]:
    """Each stored event with its class's handler (None: no view shows it, and it is not
    decoded) and the event as `stored_event` reads it (None: the mapper makes it when it
    is applied). No database is needed: the projector reads the next batch while the one
    before is written."""
    plain = (mapper.cipher is None and mapper.compressor is None
             and type(mapper.transcoder) is JSONTranscoder)
    aggs: dict[int, str] = {}  # str(UUID), by UUID.int: an aggregate has several events
    reads: list[Read] = []
    for n in notifications:
        try:
            handler, name, class_version = _topic(n.topic)
        except Exception:  # no such class: the mapper fails, where the event is set aside
            reads.append((n, _unknown_topic, None))
            continue
        event = None
        if handler is not None and plain and type(n.originator_id) is UUID:
            key = n.originator_id.int
            agg = aggs.get(key)
            if agg is None:
                agg = aggs[key] = str(n.originator_id)
            event = stored_event(n, name, class_version, agg)
        reads.append((n, handler, event))
    return reads


LEDGER_COLUMNS = ("account", "seq", "transfer_id", "amount_micro", "balance_micro",
                  "counterparty", "kind", "memo", "at")

class Fold:
    """Applies one batch's events to the views, each through its class's handler; events of
    a class no view shows (identity, canaries) pass by."""

    def __init__(self, cur: Cursor, keep_added: bool = True) -> None:
        self.cur = cur
        self.rows = BatchRows()
        # The job and provider history rows this batch added, for live subscribers (none
        # kept where no one listens).
        self.added: list[dict[str, Any]] = []
        self.keep_added = keep_added

    def apply(self, nid: int, event: Any) -> None:
        handler = HANDLERS.get(type(event))
        if handler is not None:
            handler(self, Event(nid, str(event.originator_id), type(event).__name__,
                                event.timestamp.isoformat(), event_data(event)))

    def apply_stored(self, n: Notification, mapper: Mapper[Any]) -> None:
        """Apply a stored event as `read_events` reads it."""
        self.apply_read(read_events([n], mapper)[0], mapper)

    def apply_read(self, read: Read, mapper: Mapper[Any]) -> None:
        """Apply a stored event read by `read_events`: its handler with the event read from
        its JSON, or with the mapper's domain event where the JSON alone would not do."""
        n, handler, event = read
        if handler is None:
            return
        if event is None:
            self.apply(n.id, mapper.to_domain_event(n))
        else:
            handler(self, event)

    def prefetch(self, reads: Sequence[Read]) -> None:
        """Read the rows the batch's events change, one query per table, before the first
        event: each event then finds its aggregate's row kept (or finds it is new) without a
        round trip of its own, which in a PostgreSQL pipeline would wait for every
        statement before it."""
        wanted: dict[str, set[str]] = {}
        for n, handler, event in reads:
            table = _READS.get(handler)
            if table is not None:
                wanted.setdefault(table, set()).add(str(n.originator_id) if event is None
                                                    else event.agg)
        for table, aggs in wanted.items():
            self._read(table, list(aggs))

    def _read(self, table: str, aggs: list[str]) -> None:
        """Keep the rows of these aggregates in `table` (those there are)."""
        rows = self.rows
        for start in range(0, len(aggs), 1000):  # SQLite takes up to 32,766 parameters
            chunk = aggs[start:start + 1000]
            where = f" WHERE aggregate_id IN ({', '.join('?' for _ in chunk)})"
            if table == "jobs":
                for row in self.cur.all(
                    "SELECT aggregate_id, job_id, last_seq, queued_position, provider_id"
                    " FROM jobs" + where, chunk,
                ):
                    rows.jobs[row.pop("aggregate_id")] = row
            elif table == "accounts":  # with each account's last entry's seq
                for row in self.cur.all(
                    "SELECT aggregate_id, name, balance_micro, verified_spent_micro,"
                    " outvotes_caused,"
                    " (SELECT COALESCE(MAX(seq), 0) FROM ledger_entries"
                    " WHERE account = accounts.name) AS last_seq FROM accounts" + where, chunk,
                ):
                    rows.accounts[row["aggregate_id"]] = {
                        "name": row["name"], "balance_micro": row["balance_micro"],
                        "verified_spent_micro": row["verified_spent_micro"],
                        "outvotes_caused": row["outvotes_caused"]}
                    rows.ledger_seq[row["name"]] = row["last_seq"]
            elif table == "providers":
                for row in self.cur.all(
                    f"SELECT aggregate_id, provider_id, last_seq, {', '.join(PROVIDER_JSON)}"
                    " FROM providers" + where, chunk,
                ):
                    rows.providers[row["aggregate_id"]] = {
                        "provider_id": row["provider_id"], "last_seq": row["last_seq"],
                        **{column: json.loads(row[column]) for column in PROVIDER_JSON},
                    }
            else:
                for row in self.cur.all(
                    "SELECT aggregate_id, queues, provider_ids FROM nodes" + where, chunk
                ):
                    rows.nodes[row.pop("aggregate_id")] = row

    def flush(self) -> None:
        """Write what the batch changed: `write_changes`, then `write_appends`."""
        self.write_changes()
        self.write_appends()

    def write_changes(self) -> None:
        """The rows the batch changed, one UPDATE each (fine in a PostgreSQL pipeline)."""
        self.rows.write_changes(self.cur)

    def write_appends(self) -> None:
        """The rows the batch appended, one COPY per table on PostgreSQL (not in a pipeline)."""
        self.rows.write_appends(self.cur)

    # Accounts

    def account_opened(self, e: Event) -> None:
        self.rows.insert("accounts", "aggregate_id", e.agg,
                         {"name": e.data["name"], "aggregate_id": e.agg, "balance_micro": 0})
        self.rows.accounts[e.agg] = {"name": e.data["name"], "balance_micro": 0,
                                     "verified_spent_micro": 0, "outvotes_caused": 0}
        self.rows.ledger_seq[e.data["name"]] = 0  # a new account has no entries

    def _account(self, e: Event) -> dict[str, Any] | None:
        acct = self.rows.accounts.get(e.agg)
        if acct is None:  # not prefetched: the account and its last entry's seq
            self._read("accounts", [e.agg])
            acct = self.rows.accounts.get(e.agg)
            if acct is None:
                log.error("%s for unknown account aggregate %s", e.type, e.agg)
        return acct

    def entry_posted(self, e: Event) -> None:
        acct = self._account(e)
        if acct is None:
            return
        data = e.data
        name, balance = acct["name"], acct["balance_micro"] + data["amount_micro"]
        seq = self.rows.ledger_seq[name] + 1
        acct["balance_micro"] = balance
        self.rows.ledger_seq[name] = seq
        self.rows.update("accounts", "aggregate_id", e.agg, {"balance_micro": balance})
        self.rows.append(
            "ledger_entries", LEDGER_COLUMNS,
            (name, seq, data["transfer_id"], data["amount_micro"], balance,
             data["counterparty"], data["kind"], data["memo"], e.at),
        )

    def verified_work_paid(self, e: Event) -> None:
        """A client's verified spend (no ledger entry: no money moved)."""
        acct = self._account(e)
        if acct is None:
            return
        acct["verified_spent_micro"] += e.data["amount_micro"]
        self.rows.update("accounts", "aggregate_id", e.agg,
                         {"verified_spent_micro": acct["verified_spent_micro"]})

    def outvoted_caused(self, e: Event) -> None:
        """A client's jobs caused one more `outvoted` (no ledger entry: no money moved)."""
        acct = self._account(e)
        if acct is None:
            return
        acct["outvotes_caused"] += 1
        self.rows.update("accounts", "aggregate_id", e.agg,
                         {"outvotes_caused": acct["outvotes_caused"]})

    # Nodes

    def node_registered(self, e: Event) -> None:
        self.rows.insert("nodes", "aggregate_id", e.agg, {
            "node_id": e.data["node_id"], "aggregate_id": e.agg, "region": e.data["region"],
            "operator": e.data["operator"],
        })
        self.rows.nodes[e.agg] = {"queues": "{}", "provider_ids": "[]"}  # the defaults

    def _node(self, e: Event, change: Callable[[dict[str, Any], list[str]], None]) -> None:
        if e.agg not in self.rows.nodes:
            self._read("nodes", [e.agg])
        row = self.rows.nodes.get(e.agg)
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
        self.rows.insert("jobs", "job_id", data["job_id"], {
            "job_id": data["job_id"], "aggregate_id": e.agg, "client_id": data["client_id"],
            "name": spec["name"], "state": "SUBMITTED", "max_cost_micro": data["max_cost_micro"],
            "submitted_at": e.at, "updated_at": e.at, "spec": json.dumps(spec), "last_seq": 0,
            "queue": f"{node}/{queue}", "priority": spec.get("priority", 0),
            "gpus": spec.get("resources", {}).get("gpus", 1),
            "timeout_s": int(spec.get("timeout", 600)),
        })
        self.rows.jobs[e.agg] = {"job_id": data["job_id"], "last_seq": 0,
                                 "queued_position": None, "provider_id": None}
        self.job(Event(e.nid, e.agg, e.type, e.at,
                       {k: v for k, v in data.items() if k not in ("spec", "sealed_env")}))

    def job(self, e: Event) -> None:
        if e.agg not in self.rows.jobs:
            self._read("jobs", [e.agg])
        job = self.rows.jobs.get(e.agg)
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
        self.rows.append(f"{kind}_events", tuple(row), tuple(row.values()))
        if self.keep_added:
            self.added.append({**row, "stream": f"{kind}:{key}"})

    # Providers: every event is appended to the provider's history; PROVIDER_CHANGES
    # say what else it changes (the row's columns, or its lists kept parsed in `kept`).

    def provider_registered(self, e: Event) -> None:
        data = e.data
        self.rows.insert("providers", "aggregate_id", e.agg, {
            "provider_id": data["provider_id"], "aggregate_id": e.agg, "region": data["region"],
            "status": "online", "price_micro": data["price_per_gpu_hour_micro"],
            "gpus": json.dumps(data["gpus"]), "reputation": reputation_score([]),
            "updated_at": e.at,
        })
        self.rows.providers[e.agg] = {  # its lists as the columns' defaults hold them
            "provider_id": data["provider_id"], "last_seq": 0, "reservations": {},
            "reservation_clients": {}, "outcomes": [], "outcome_times": [],
            "outcome_clients": [], "outcome_spent": [], "outcome_outvotes": [], "suspended": [],
            "degraded": {},
        }
        self.provider(e)

    def provider(self, e: Event) -> None:
        if e.agg not in self.rows.providers:
            self._read("providers", [e.agg])
        kept = self.rows.providers.get(e.agg)
        if kept is None:
            log.error("event %s for unknown provider aggregate %s", e.type, e.agg)
            return
        seq = kept["last_seq"] = kept["last_seq"] + 1
        self._history("provider", kept["provider_id"], seq, e)
        changes: dict[str, Any] = {"updated_at": e.at, "last_seq": seq}
        more = PROVIDER_CHANGES.get(e.type)
        if more is not None:
            changes.update(more(kept, e.data))
        self.rows.update("providers", "aggregate_id", e.agg, changes)
        self.rows.changed_providers.add(e.agg)


Handler = Callable[[Fold, Event], None]


def _unknown_topic(fold: Fold, e: Event) -> None:
    """The handler read_events gives an event whose topic names no class: never called, as
    the mapper fails on it first."""
    raise AssertionError(f"event {e.nid} of an unknown topic was read")


# A stored event as read_events reads it: its handler, and the event where its JSON gave it.
Read = tuple[Notification, Handler | None, Event | None]

# The handler of each event class the views show. Job's and Provider's GpusReleased and
# ReputationRecorded are different classes, each with its own handler.
HANDLERS: dict[type[Aggregate.Event], Handler] = {
    event_class(Account, "AccountOpened"): Fold.account_opened,
    Account.EntryPosted: Fold.entry_posted,
    event_class(Account, "VerifiedWorkPaid"): Fold.verified_work_paid,
    event_class(Account, "OutvotedCaused"): Fold.outvoted_caused,
    event_class(Node, "NodeRegistered"): Fold.node_registered,
    event_class(Node, "QueueConfigured"): Fold.queue_configured,
    event_class(Node, "QueueRemoved"): Fold.queue_removed,
    event_class(Node, "ProviderJoinedNode"): Fold.provider_joined_node,
    **{event_class(Job, name): Fold.job for name in STATE_AFTER},
    event_class(Job, "JobSubmitted"): Fold.job_submitted,
    **{event_class(Provider, name): Fold.provider for name in PROVIDER_EVENTS},
    event_class(Provider, "ProviderRegistered"): Fold.provider_registered,
}

# By stored topic: the handler of its class (None: no view shows it), the class's name and
# its class_version.
_TOPICS: dict[str, tuple[Handler | None, str, int]] = {}


def _topic(topic: str) -> tuple[Handler | None, str, int]:
    known = _TOPICS.get(topic)
    if known is None:
        cls = resolve_topic(topic)
        known = _TOPICS[topic] = (HANDLERS.get(cls), cls.__name__,
                                  getattr(cls, "class_version", 1))
    return known


# The table whose row each handler reads (a handler that creates its row reads none).
_READS: dict[Handler | None, str] = {
    Fold.entry_posted: "accounts", Fold.verified_work_paid: "accounts",
    Fold.outvoted_caused: "accounts", Fold.job: "jobs",
    Fold.provider: "providers",
    Fold.queue_configured: "nodes", Fold.queue_removed: "nodes",
    Fold.provider_joined_node: "nodes",
}
