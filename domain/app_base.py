"""The application's base: one event store, loading helpers, load-decide-save retries.

Thin: each command loads aggregates, lets them check and apply, saves the changed
ones together (one transaction), and returns primitives. Every command is safe to call
twice with the same arguments.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from copy import deepcopy
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError, OperationalError

from domain.errors import (
    UnknownJob,
    UnknownProvider,
)
from domain.job import Job
from domain.ledger import (
    MAY_GO_NEGATIVE,
    Account,
)
from domain.node import Node
from domain.provider import Directory, Provider

# Hot accounts (the protocol's fees, a busy provider) make writers collide; each retry
# reloads and decides again, after a jittered pause so colliding writers spread out.
CONFLICT_RETRIES = 60
# The application's name: its tables (gpgpu_events) and its environment variables.
NAME = "gpgpu"
# Aggregates this process keeps, most recently used first, to load the next time from
# the events stored after them rather than from their first event (or snapshot).
CACHED_AGGREGATES = 4096
_STRIPES = 64  # locks, by aggregate id: one aggregate is brought up to date at a time

T = TypeVar("T")
# A unit of work that lost this many races in a row runs its commands one at a time.
UNIT_TRIES = 5


def _project(aggregate: Any, events: Iterable[Any]) -> Any:
    """eventsourcing's projector without its `isinstance(event, CanMutateProtocol)` assert
    per event (a runtime Protocol check: about half of what loading an aggregate cost)."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


def _copy(aggregate: Any) -> Any:
    """A deep copy, but for the lists the aggregate's class names in FLAT_LISTS (lists of
    strings and numbers that grow with its history: a provider's outcomes, an account's
    posted transfer ids), which are copied flat: deepcopy's cost per item would grow
    with the aggregate's age."""
    names: tuple[str, ...] = getattr(type(aggregate), "FLAT_LISTS", ())
    memo: dict[int, Any] = {}
    for name in names:
        value = getattr(aggregate, name, None)
        if type(value) is list:
            memo[id(value)] = list(value)
    return deepcopy(aggregate, memo)


class AggregateCache:
    """Aggregates as last loaded, each brought up to date on the next load with the
    events stored since (by any process), then handed out as a deep copy: a command
    changes its own copy only, and a save that loses a race changes nothing here.

    Every load still reads the store (the events after the cached version), so what a
    command sees is as current as an uncached load; only the decoding and replay of the
    events it had already seen is saved."""

    def __init__(self, size: int = CACHED_AGGREGATES):
        self.size = size
        self._items: OrderedDict[UUID, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]

    def load(self, app: Application[Any], aggregate_id: UUID) -> Any:
        """The aggregate as stored now; AggregateNotFoundError when it has no events."""
        with self._stripes[hash(aggregate_id) % _STRIPES]:
            with self._lock:
                cached = self._items.get(aggregate_id)
            if cached is None:
                aggregate = app.repository.get(aggregate_id, projector_func=_project)
            else:
                try:
                    aggregate = _project(cached, app.repository.event_store.get(
                        originator_id=aggregate_id, gt=cached.version))
                except BaseException:
                    self.forget(aggregate_id)  # possibly half brought up to date
                    raise
            with self._lock:
                self._items[aggregate_id] = aggregate
                self._items.move_to_end(aggregate_id)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            return _copy(aggregate)

    def forget(self, aggregate_id: UUID) -> None:
        with self._lock:
            self._items.pop(aggregate_id, None)


def _pause_after_conflict(err: Exception, n: int) -> None:
    """Before try n + 2 of a save that lost a race: another writer got there first
    (IntegrityError: a short random pause), or, on SQLite shared by several processes,
    holds the lock (OperationalError: a longer one)."""
    if isinstance(err, IntegrityError):
        time.sleep(random.uniform(0, min(0.002 * 2**n, 0.1)))
    else:
        time.sleep(min(0.01 * 2**n, 0.5))


class Unit:
    """A unit of work: several commands decided on the same copies of their aggregates,
    then saved together (`Base.in_one_transaction`).

    `aggregates` holds every aggregate a command of the unit loaded or changed, by id: the
    next command that loads one gets this copy, with what the commands before it changed
    (an account the settlement opened, a job settled before it is finished). `events` are
    the new events of each command's changed aggregates, in the order each command would
    have saved them on its own; `saved` the changed aggregates, once each, in the order
    first changed."""

    def __init__(self) -> None:
        self.aggregates: dict[UUID, Any] = {}
        self.saved: dict[UUID, Any] = {}
        self.events: list[Any] = []

    def changed(self, aggregates: Iterable[Any]) -> None:
        for aggregate in aggregates:
            self.aggregates[aggregate.id] = self.saved[aggregate.id] = aggregate
            self.events.extend(aggregate.collect_events())


class Base(Application[Any]):
    """The store every context's commands share (one event log: the read model folds it),
    with the loading helpers and the load-decide-save retry."""

    name = NAME
    # Long-lived aggregates (a client's account, the fee account, a busy provider) load from
    # their latest snapshot plus what came after, not from their first event.
    snapshotting_intervals: ClassVar[dict[Any, int]] = {
        Account: 50, Provider: 50, Directory: 50, Node: 50
    }

    # Loading helpers

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._aggregates = AggregateCache()
        self._conflicted = threading.RLock()
        self._units = threading.local()  # the unit of work open in this thread, if any
        super().__init__(*args, **kwargs)

    def _unit(self) -> Unit | None:
        unit: Unit | None = getattr(self._units, "open", None)
        return unit

    def _get_or_none(self, aggregate_id: Any) -> Any:
        unit = self._unit()
        if unit is not None and aggregate_id in unit.aggregates:
            return unit.aggregates[aggregate_id]
        try:
            aggregate = self._aggregates.load(self, aggregate_id)
        except AggregateNotFoundError:
            return None
        if unit is not None:
            unit.aggregates[aggregate_id] = aggregate
        return aggregate

    def job(self, job_id: str) -> Job:
        job = self._get_or_none(Job.create_id(job_id=job_id))
        if job is None:
            raise UnknownJob("", f"no job {job_id}")
        return job

    def find_job(self, job_id: str) -> Job | None:
        job: Job | None = self._get_or_none(Job.create_id(job_id=job_id))
        return job

    def provider(self, provider_id: str) -> Provider:
        provider = self._get_or_none(Provider.create_id(provider_id=provider_id))
        if provider is None:
            raise UnknownProvider("", f"no provider {provider_id}")
        return provider

    def account(self, name: str) -> Account:
        account = self._get_or_none(Account.create_id(name=name))
        if account is None:
            account = Account(name=name, may_go_negative=name in MAY_GO_NEGATIVE)
        return account

    def balance(self, name: str) -> int:
        account = self._get_or_none(Account.create_id(name=name))
        return 0 if account is None else int(account.balance_micro)

    def _save_retrying(self, attempt_fn: Any) -> Any:
        """Run load-decide-save again when another writer got there first.

        The first try runs beside this process's other commands; a try after a conflict
        runs alone among them (`_conflicted`), so that the commands of one process that
        write the same hot aggregate (the fee account, a busy provider, a client's
        account) do not collide again and again, each retry loading everything anew.
        Writers in other processes are still met by the retry.

        Inside a unit of work (`in_one_transaction`) the command decides once and its
        changes join the unit's: the unit saves, and tries everything again on a conflict."""
        unit = self._unit()
        if unit is not None:
            result, changed = attempt_fn()
            unit.changed(changed)
            return result
        for n in range(CONFLICT_RETRIES):
            try:
                with self._conflicted if n else contextlib.nullcontext():
                    result, changed = attempt_fn()
                    if changed:
                        self.save(*changed)
                return result
            except (IntegrityError, OperationalError) as err:
                _pause_after_conflict(err, n)
        raise RuntimeError("gave up after repeated concurrent conflicts")

    def in_one_transaction(self, work: Callable[[], T]) -> T:
        """Run several commands (`work`) as one: each decides on what the ones before it
        changed, and every event they record is saved in one transaction, in the order
        they would have been saved one command at a time. A conflict runs them all again,
        on aggregates loaded anew, as `_save_retrying` does one command; past UNIT_TRIES
        conflicts they run one at a time. Commands that change nothing (all of them
        again, after the unit was saved) save nothing."""
        if self._unit() is not None:
            return work()  # already inside one: its own unit saves
        for n in range(UNIT_TRIES):
            unit = self._units.open = Unit()
            try:
                with self._conflicted if n else contextlib.nullcontext():
                    result = work()
                    # Every change was returned by the command that made it (as a command
                    # saved alone saves only what it returns): none is left to slip in.
                    stray = [a for a in unit.aggregates.values() if a.pending_events]
                    if stray:
                        what = f"{type(stray[0]).__name__} {stray[0].id}"
                        raise RuntimeError(f"a command of the unit changed {what} without "
                                           "returning it")
                    if unit.events:
                        # The events in their order, then their aggregates, which have no
                        # events left to give but are what snapshots are taken from.
                        self.save(*unit.events, *unit.saved.values())
                return result
            except (IntegrityError, OperationalError) as err:
                _pause_after_conflict(err, n)
            finally:
                self._units.open = None
        # Contended: the commands one at a time, as before there were units (each is
        # idempotent and tries again on its own), so that a writer who keeps one of the
        # aggregates busy holds up only the command that writes it, not the others (a
        # provider's own churn cannot keep a job's settlement from being made).
        return work()
