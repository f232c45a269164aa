"""The application's base: one event store, loading helpers, load-decide-save retries.

Thin: each command loads aggregates, lets them check and apply, saves the changed
ones together (one transaction), and returns primitives. Every command is safe to call
twice with the same arguments.
"""

from __future__ import annotations

import random
import time
from typing import Any, ClassVar

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

    def _get_or_none(self, aggregate_id: Any) -> Any:
        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None

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
        """Run load-decide-save again when another writer got there first."""
        for n in range(CONFLICT_RETRIES):
            try:
                result, changed = attempt_fn()
                if changed:
                    self.save(*changed)
                return result
            except IntegrityError:
                time.sleep(random.uniform(0, min(0.002 * 2**n, 0.1)))
            except OperationalError:
                # SQLite shared by several processes: another writer holds the lock.
                time.sleep(min(0.01 * 2**n, 0.5))
        raise RuntimeError("gave up after repeated concurrent conflicts")
