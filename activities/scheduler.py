"""The control worker's scheduler: places a queue's waiting jobs together, in fair order.

The allocate activity hands its request to the scheduler and waits a few
seconds for a placement. A scheduler thread runs rounds: for each queue with
waiting jobs it takes the node's providers (its own copies, refreshed from the
event log), orders the waiting jobs by priority and fair share, places what
fits (`domain.scheduling.plan`) and writes the round's reservations in one
transaction (`Network.place`), which the store refuses if any copy was stale:
then each placement is retried alone on fresh copies. Several control workers
may run schedulers side by side: they never book a GPU twice (the store's
version check), and each counts the others' placements (read from the log) in fair
share: the GPUs each client holds, and whom it served last. Each still orders only the
jobs waiting on it.

A request that gives up (the activity's wait is short so cancellation stays
quick; Temporal retries it) stays in line a little longer; if it is placed
meanwhile, the retry finds the allocation already recorded on the job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from uuid import UUID

from eventsourcing.persistence import Notification

from domain.application import Network
from domain.fleet import FleetCopies
from domain.job import Job
from domain.matching import Decision
from domain.node import Node, split_queue
from domain.scheduling import Placement, Waiting, plan

log = logging.getLogger(__name__)

# How long a request stays in line after its activity stopped waiting.
LINGER_S = 8.0


@dataclass
class _Ticket:
    entry: Waiting
    job: Job | None = None  # the scheduler's copy, written with the placement
    done: threading.Event = field(default_factory=threading.Event)
    decision: Decision | None = None
    reason: str = "waiting for the scheduler"
    abandoned_at: float | None = None


class Scheduler:
    def __init__(
        self,
        network: Network,
        online: Callable[[], set[str]],
        round_interval_s: float = 0.1,
        timings: list[float] | None = None,  # bench/matching.py: each decision's duration
    ) -> None:
        self.network = network
        self.timings = timings
        self.online = online
        self.round_interval_s = round_interval_s
        self._lock = threading.Lock()
        self._tickets: dict[tuple[str, int], _Ticket] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Its own copies of the nodes and providers (it writes them as it places jobs).
        self.fleet = FleetCopies(network)
        # Client -> the turn it was last given GPUs: fair share's tie-break (least recent first).
        self._served: dict[str, int] = {}
        self._turns = 0

    # The activity's side

    def request(
        self,
        job_id: str,
        attempt: int,
        excluded: set[str],
        wait_s: float,
        cancelled: Callable[[], bool] = lambda: False,
        heartbeat: Callable[[str], None] = lambda _: None,
        avoided: set[str] | None = None,
    ) -> Decision | str:
        """A placement for this allocation, or why there is none yet after `wait_s`;
        `avoided` providers only where no other can take it (domain/scheduling.py)."""
        job = self.network.job(job_id)
        if attempt in job.allocations:  # placed while the previous try was away
            return self._held(job_id, attempt)
        key = (job_id, attempt)
        ticket = self.enqueue(job_id, attempt, excluded, avoided)
        self._ensure_running()
        self._wake.set()
        deadline = time.monotonic() + wait_s
        while not ticket.done.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
            heartbeat(ticket.reason)
            if cancelled() or time.monotonic() >= deadline:
                with self._lock:
                    if not ticket.done.is_set():
                        ticket.abandoned_at = time.monotonic()
                        if cancelled():
                            del self._tickets[key]
                        return ticket.reason
        with self._lock:
            self._tickets.pop(key, None)
        assert ticket.decision is not None
        return ticket.decision

    def enqueue(
        self, job_id: str, attempt: int, excluded: set[str], avoided: set[str] | None = None
    ) -> _Ticket:
        """Put one allocation in line (again); the next round may place it."""
        key = (job_id, attempt)
        with self._lock:
            ticket = self._tickets.get(key)
        if ticket is None:
            job = self.network.job(job_id)
            node = self._node(split_queue(str(job.spec.get("queue", "default")))[0])
            entry = self.network.waiting_entry(job_id, attempt, excluded, job, node, avoided)
            with self._lock:
                ticket = self._tickets.setdefault(key, _Ticket(entry, job))
        elif not excluded <= ticket.entry.excluded:  # a later try knows more to leave out
            with self._lock:
                ticket.entry = replace(ticket.entry,
                                       excluded=ticket.entry.excluded | frozenset(excluded))
        ticket.abandoned_at = None
        return ticket

    def withdraw(self, job_id: str, attempt: int) -> None:
        """This allocation is no longer wanted: out of line now, not after LINGER_S."""
        with self._lock:
            self._tickets.pop((job_id, attempt), None)

    def _held(self, job_id: str, attempt: int) -> Decision:
        job = self.network.job(job_id)
        provider = self.network.provider(job.allocations[attempt])
        return Decision(provider.provider_id, provider.reservations.get(job_id, []),
                        provider.price_per_gpu_hour_micro)

    def waiting_reasons(self) -> dict[tuple[str, int], str]:
        with self._lock:
            return {k: t.reason for k, t in self._tickets.items()}

    def wake(self) -> None:
        """GPUs may have come free (a job finished): run a round soon."""
        self._wake.set()

    # The scheduler thread

    def _ensure_running(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=self.round_interval_s)
            self._wake.clear()
            try:
                self.run_round()
            except Exception:  # a round that fails is retried by the next one
                log.exception("scheduling round failed")
                time.sleep(self.round_interval_s)

    def run_round(self) -> int:
        """One pass over every queue with waiting jobs; returns how many were placed."""
        now = time.monotonic()
        by_queue: dict[str, list[_Ticket]] = defaultdict(list)
        with self._lock:
            for key, t in list(self._tickets.items()):
                if t.abandoned_at is not None and now - t.abandoned_at > LINGER_S:
                    del self._tickets[key]
                elif not t.done.is_set():
                    by_queue[t.entry.queue].append(t)
        if not by_queue:
            return 0
        self._refresh()
        online = self.online()
        placed = 0
        for queue, tickets in by_queue.items():
            placed += self._round_for(queue, tickets, online)
        return placed

    def _round_for(self, queue_ref: str, tickets: list[_Ticket], online: set[str]) -> int:
        node_id, queue = split_queue(queue_ref)
        node = self._node(node_id)
        if queue not in node.queues:
            for t in tickets:
                t.reason = f"queue {queue_ref} does not exist"
            return 0
        config = node.queues[queue]
        providers = [self.fleet.provider(pid) for pid in node.provider_ids]
        candidates = [self.fleet.candidate(p, p.provider_id in online) for p in providers]
        held: dict[str, int] = defaultdict(int)
        for p in providers:
            for job_id, client in p.reservation_clients.items():
                if job_id in p.reservations:
                    held[client] += len(p.reservations[job_id])
        # Replicas of one job never share a provider: one that holds GPUs for the job, or
        # that ran another of its runs and gave them back (a ticket in line since before
        # that run was placed does not know it from its own exclusions).
        holding: dict[str, set[str]] = defaultdict(set)
        for p in providers:
            for job_id in p.reservations:
                holding[job_id].add(p.provider_id)
        # ... nor an owner: every provider of a holder's account is out for its replicas.
        owners = self.fleet.owners(node.provider_ids)
        entries = []
        for t in tickets:
            if t.job is None:
                t.job = self.network.job(t.entry.job_id)
            if t.entry.attempt in t.job.allocations:
                # Placed already: by a copy of this request that came first (Temporal may
                # run an activity twice at once) and took its ticket out of line, or by
                # another process. Its GPUs are no longer free for it: it takes them.
                t.decision = self._held(t.entry.job_id, t.entry.attempt)
                t.done.set()
                continue
            ran = holding.get(t.entry.job_id, set()) | t.job.ran_on(t.entry.attempt)
            held_by = {owners.get(pid, pid) for pid in ran}
            extra = {pid for pid, owner in owners.items() if owner in held_by}
            entries.append(replace(t.entry, excluded=t.entry.excluded | extra) if extra
                           else t.entry)
        result = plan(
            entries,
            candidates,
            held,
            fair_share=config.get("fair_share", True),
            max_gpus_per_client=config.get("max_gpus_per_client", 0),
            home_region=node.region,
            served=self._served,
            timings=self.timings,
            owners=owners,
            now=time.time(),
        )
        by_key = {(t.entry.job_id, t.entry.attempt): t for t in tickets}
        for key, why in result.waiting.items():
            by_key[key].reason = f"waiting in {queue_ref}: {why}"
        jobs = {t.entry.job_id: t.job for t in tickets if t.job is not None}
        written = self.network.place(result.placements, self.fleet.providers, jobs)
        for t in tickets:  # a copy the store refused is reloaded when next needed
            t.job = jobs.get(t.entry.job_id)
        placed = 0
        for placement, ok in zip(result.placements, written, strict=True):
            ticket = by_key[(placement.job_id, placement.attempt)]
            if ok:
                self._turns += 1
                self._served[placement.client_id] = self._turns
                ticket.decision = _decision(placement)
                ticket.done.set()
                placed += 1
            else:
                ticket.reason = "lost a race for GPUs; trying again"
                self._wake.set()
        return placed

    def load_node(self, node_id: str) -> None:
        """Load a node and all its providers now (a long-lived scheduler has them already)."""
        node = self._node(node_id)
        for pid in node.provider_ids:
            self.fleet.provider(pid)

    def _node(self, node_id: str) -> Node:
        return self.fleet.node(node_id)

    def _refresh(self) -> None:
        """Reload the copies that someone else changed since the last round (a waiting job's
        copy on its next round: where its other runs were placed, lost, given up)."""
        waiting: dict[UUID, str] | None = None
        changed_jobs: set[str] = set()

        def observe(n: Notification, newer: bool) -> None:
            nonlocal waiting
            if newer:
                if n.topic.endswith(".GpusReserved"):
                    self._served_elsewhere(n)
                return
            if waiting is None:
                with self._lock:
                    waiting = {Job.create_id(job_id=job_id): job_id
                               for job_id, _ in self._tickets}
            job_id = waiting.get(n.originator_id)  # type: ignore[arg-type]
            if job_id is not None:
                changed_jobs.add(job_id)

        self.fleet.refresh(observe)
        if changed_jobs:
            with self._lock:
                for (job_id, _), ticket in self._tickets.items():
                    if job_id in changed_jobs:
                        ticket.job = None  # reloaded when its round needs it

    def _served_elsewhere(self, notification: Notification) -> None:
        """Another scheduler gave a client GPUs: it counts as that client's turn here too,
        so fair share's tie-break (least recently served) holds across control workers."""
        reserved = self.network.mapper.to_domain_event(notification)
        client = getattr(reserved, "client_id", "")
        if client:
            self._turns += 1
            self._served[client] = self._turns


def _decision(p: Placement) -> Decision:
    return Decision(p.provider_id, p.gpu_indexes, p.price_per_gpu_hour_micro)
