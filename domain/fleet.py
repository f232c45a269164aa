"""Copies of the market's nodes and providers, kept current from the event log.

Whoever reads a node's whole fleet often (the scheduler each round; the API for each
submitted job's "could any provider ever run this" and each explanation) keeps copies
here rather than loading every provider each time: a load reads the store once per
aggregate, so a node of 10,000 providers cost 10,000 queries per submitted job. A
refresh reads the notifications stored since the last one (one query, usually a few
rows) and reloads only the copies they say changed. A copy is replaced, never changed in
place, so a reader on another thread keeps a consistent one (the scheduler, which
writes its copies as it places jobs, keeps a FleetCopies of its own).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING
from uuid import UUID

from eventsourcing.persistence import Notification

from domain.identity import client_id_of
from domain.matching import Candidate
from domain.node import Node
from domain.provider import Provider
from domain.resting import streak

if TYPE_CHECKING:
    from domain.app_market import Market

BATCH = 5000  # notifications read per query while catching up


def candidate(p: Provider, online: bool, own_client: str | None = None) -> Candidate:
    """What matching needs of a provider (domain/matching.py); `own_client`: its owner's
    client id, whose jobs' successes end no rest (domain/resting.py)."""
    return Candidate(
        provider_id=p.provider_id,
        price_per_gpu_hour_micro=p.price_per_gpu_hour_micro,
        reputation=p.reputation,
        online=p.status == "online" and online,
        gpus=p.gpus,
        free_gpu_indexes=p.free_gpu_indexes(),
        runtimes=tuple(p.runtimes),
        region=p.region,
        suspended=tuple(p.suspended),
        degraded={int(i): why for i, why in p.degraded.items()},
        sandbox=getattr(p, "sandbox", ""),
        streak=streak(p.outcomes, p.outcome_times, p.outcome_clients, p.outcome_spent,
                      own_client),
    )


class FleetCopies:
    """Nodes and providers as last loaded, reloaded when the log says they changed.

    `catch_up` bounds a refresh that finds the log far ahead (a process that read no
    fleet for a long time): past that many notifications it drops every copy (each is
    loaded again when next asked for) rather than read them all."""

    def __init__(self, network: Market, catch_up: int | None = None):
        self.network = network
        self.catch_up = catch_up
        self.lock = threading.RLock()
        self.providers: dict[str, Provider] = {}
        self.nodes: dict[str, Node] = {}
        self._by_uuid: dict[UUID, str] = {}  # aggregate id -> "p:<id>" or "n:<id>"
        self._candidates: dict[str, tuple[tuple[int, bool], Candidate]] = {}
        self._owner_of: dict[str, str] = {}  # provider id -> owning account
        self.position = network.recorder.max_notification_id() or 0

    def provider(self, provider_id: str) -> Provider:
        with self.lock:
            found = self.providers.get(provider_id)
            if found is None:
                found = self.providers[provider_id] = self.network.provider(provider_id)
                self._by_uuid[found.id] = "p:" + provider_id
            return found

    def node(self, node_id: str) -> Node:
        with self.lock:
            found = self.nodes.get(node_id)
            if found is None:
                found = self.network.node(node_id)
                if found.pending_events:  # the default node, not stored yet: not kept
                    return found
                self.nodes[node_id] = found
                self._by_uuid[found.id] = "n:" + node_id
            return found

    def candidate(self, p: Provider, online: bool) -> Candidate:
        """The provider's candidate, made again only when the provider or `online` changed."""
        key = (p.version, online)
        with self.lock:
            cached = self._candidates.get(p.provider_id)
            if cached is None or cached[0] != key:
                cached = (key, candidate(p, online, self.own_client(p)))
                self._candidates[p.provider_id] = cached
            return cached[1]

    def own_client(self, p: Provider) -> str | None:
        """The client id of the provider's owner, looked up only for one that lost a run
        (only its rest needs it); None where no account claimed it."""
        if "lost" not in p.outcomes:
            return None
        owner = self.owners([p.provider_id])[p.provider_id]
        return None if owner == p.provider_id else client_id_of(UUID(owner))

    def owners(self, provider_ids: list[str]) -> dict[str, str]:
        """Provider id -> owning account, itself where none claimed it (a claim never
        changes hands: asked once each)."""
        with self.lock:
            for pid in provider_ids:
                if pid not in self._owner_of:
                    self._owner_of[pid] = self.network.owner_of("provider", pid) or pid
            return {pid: self._owner_of[pid] for pid in provider_ids}

    def of_node(self, node_id: str, online: set[str]) -> tuple[Node, list[Candidate]]:
        """The node and its providers' candidates, as the log has them now."""
        with self.lock:
            self.refresh()
            node = self.node(node_id)
            return node, [self.candidate(self.provider(pid), pid in online)
                          for pid in node.provider_ids]

    def refresh(self, observe: Callable[[Notification, bool], None] | None = None) -> None:
        """Reload the copies someone changed since the last refresh. `observe` sees each
        notification read, and whether it made a copy stale."""
        with self.lock:
            if self.catch_up is not None:
                last = self.network.recorder.max_notification_id() or 0
                if last - self.position > self.catch_up:
                    self.providers.clear()
                    self.nodes.clear()
                    self._by_uuid.clear()
                    self._candidates.clear()
                    self.position = last
                    return
            stale: set[str] = set()
            while True:
                batch = self.network.recorder.select_notifications(
                    start=self.position, limit=BATCH, inclusive_of_start=False)
                for n in batch:
                    name = self._by_uuid.get(n.originator_id)  # type: ignore[arg-type]
                    copy = None if name is None else (
                        self.providers if name[0] == "p" else self.nodes).get(name[2:])
                    newer = copy is not None and n.originator_version > copy.version
                    if newer:
                        stale.add(str(name))
                    if observe is not None:
                        observe(n, newer)
                if batch:
                    self.position = batch[-1].id
                if len(batch) < BATCH:
                    break
            for name in stale:
                if name[0] == "p":
                    self.providers[name[2:]] = self.network.provider(name[2:])
                else:
                    self.nodes[name[2:]] = self.network.node(name[2:])
