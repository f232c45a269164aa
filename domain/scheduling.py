"""Scheduling: which of a queue's waiting jobs goes next, and onto which GPUs.

Pure functions of what the caller passes in (no I/O, no clock), so the order a
scheduler placed jobs in and the queue position the API shows come from the
same code.

Order (`fair_order`): higher priority first. Within one priority, with fair
share on, the next job is the oldest job of the client that holds the fewest
GPUs, counting the GPUs it already runs on and those this order has handed it
so far; so one client's 500 jobs do not starve another's 5 (each gets every
other GPU). Clients that hold as many go least recently served first (`served`:
a number that grows each time a client is given GPUs), else the one with the
oldest job: on a busy queue most rounds are such ties, and oldest-first alone
would hand them all to the client that queued first. With fair share off,
oldest first.

Placement (`plan`): in that order, each job gets the best-scoring provider that
is eligible (`domain.matching.assess`) and still has enough free GPUs after the
placements before it; a provider the job `avoided` (one lost once while running it),
or one that rests after runs lost with it or its owner's other providers
(domain/resting.py), only when no other provider can take it in this round. A
client at the queue's cap on concurrent GPUs waits; a job that fits nowhere waits,
and smaller jobs behind it may still start (backfill: a large job can wait long on a
busy queue; its position shows it).

Speed: providers are sorted once per round by score for each distinct set of
requirements, so one decision looks at the first few providers of a sorted
list instead of every provider; a provider's load term is as of the round's
start.
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from domain.matching import Candidate, Requirements, gpu_fits, isolates, score
from domain.resting import rests_until


@dataclass(frozen=True)
class Waiting:
    """One allocation a job waits for (a job with replicas waits for several)."""

    job_id: str
    attempt: int
    client_id: str
    priority: int
    queued_at: float  # when the job entered the queue: equals go oldest first
    req: Requirements
    excluded: frozenset[str] = frozenset()
    queue: str = "default"  # "<node>/<queue>"
    avoided: frozenset[str] = frozenset()  # a last resort: placed only where no other fits


@dataclass(frozen=True)
class Placement:
    job_id: str
    attempt: int
    client_id: str
    provider_id: str
    gpu_indexes: list[int]
    price_per_gpu_hour_micro: int


@dataclass
class Plan:
    placements: list[Placement] = field(default_factory=list)
    # (job id, attempt) -> why it still waits ("client cap", "no eligible GPUs")
    waiting: dict[tuple[str, int], str] = field(default_factory=dict)


def fair_order(
    waiting: Iterable[Waiting],
    held_by_client: Mapping[str, int],
    fair_share: bool = True,
    served: Mapping[str, int] | None = None,
) -> list[Waiting]:
    """The order in which waiting jobs get GPUs (see the module docstring)."""
    oldest_first = sorted(waiting, key=lambda w: (w.queued_at, w.job_id, w.attempt))
    if not fair_share:
        return sorted(oldest_first, key=lambda w: -w.priority)  # stable: FIFO per priority
    held = defaultdict(int, held_by_client)
    last = defaultdict(lambda: -1, served or {})
    turn = max(last.values(), default=0)
    by_priority: dict[int, dict[str, deque[Waiting]]] = defaultdict(dict)
    for w in oldest_first:
        by_priority[w.priority].setdefault(w.client_id, deque()).append(w)
    ordered: list[Waiting] = []
    for priority in sorted(by_priority, reverse=True):
        lines = by_priority[priority]
        heap = [(held[c], last[c], line[0].queued_at, c) for c, line in lines.items()]
        heapq.heapify(heap)
        while heap:
            *_, client = heapq.heappop(heap)
            line = lines[client]
            job = line.popleft()
            ordered.append(job)
            held[client] += job.req.gpus
            turn += 1
            last[client] = turn
            if line:
                heapq.heappush(heap, (held[client], last[client], line[0].queued_at, client))
    return ordered


def resting(candidates: Iterable[Candidate], owners: Mapping[str, str],
            now: float | None) -> dict[str, float]:
    """The providers whose owner rests at `now` (domain/resting.py), each with the time its
    rest is over; none with no `now`."""
    if now is None:
        return {}
    by_owner: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        by_owner[owners.get(c.provider_id, c.provider_id)].append(c)
    found: dict[str, float] = {}
    for mates in by_owner.values():
        if any(c.streak[1] for c in mates):
            until = rests_until(c.streak for c in mates)
            if until > now:
                found.update((c.provider_id, until) for c in mates)
    return found


class _Pool:
    """The round's view of free GPUs, updated as placements are made."""

    def __init__(self, candidates: Iterable[Candidate], home_region: str,
                 owners: Mapping[str, str] | None = None, now: float | None = None) -> None:
        self.by_id = {c.provider_id: c for c in candidates}
        self.resting = frozenset(resting(self.by_id.values(), owners or {}, now))
        self.free = {pid: list(c.free_gpu_indexes) for pid, c in self.by_id.items()}
        self.home_region = home_region
        self._sorted: dict[Requirements, list[str]] = {}
        # Each provider's GPUs as a shape, so a model/memory test runs once per shape.
        self._shape: dict[str, tuple[tuple[str, int], ...]] = {
            c.provider_id: tuple(sorted((str(g["model"]), int(g["memory_mb"])) for g in c.gpus))
            for c in self.by_id.values()
        }
        # Online providers by score; the score depends on a job only through its max price.
        self._by_score: dict[int, list[tuple[float, str]]] = {}

    def _scored(self, req: Requirements) -> list[tuple[float, str]]:
        ranked = self._by_score.get(req.max_price_per_gpu_hour_micro)
        if ranked is None:
            ranked = sorted((score(req, c, self.home_region), c.provider_id)
                            for c in self.by_id.values() if c.online)
            self._by_score[req.max_price_per_gpu_hour_micro] = ranked
        return ranked

    def ranked(self, req: Requirements) -> list[str]:
        """Providers that could serve `req` when free, best score first (cached per round).

        The same tests as `domain.matching.assess`, grouped for speed; a test checks
        that both agree.
        """
        ranked = self._sorted.get(req)
        if ranked is not None:
            return ranked
        shape_fits: dict[tuple[tuple[str, int], ...], bool] = {}
        ranked = []
        for _, pid in self._scored(req):
            c = self.by_id[pid]
            shape = self._shape[pid]
            fits = shape_fits.get(shape)
            if fits is None:
                fits = shape_fits[shape] = sum(
                    1 for model, memory in shape if gpu_fits(req, model, memory)) >= req.gpus
            if (
                not fits
                or c.price_per_gpu_hour_micro > req.max_price_per_gpu_hour_micro
                or c.reputation < req.min_reputation
                or (req.region is not None and c.region != req.region)
                or req.runtime not in c.runtimes
                or not isolates(req, c)
            ):
                continue
            ranked.append(pid)
        self._sorted[req] = ranked
        return ranked

    def take(self, w: Waiting, also_excluded: set[str]) -> tuple[str, list[int]] | None:
        ranked = self.ranked(w.req)
        last = w.avoided | self.resting
        if last:  # the others first, then the job's last resort and the resting
            ranked = ([pid for pid in ranked if pid not in last]
                      + [pid for pid in ranked if pid in last])
        for pid in ranked:
            if pid in w.excluded or pid in also_excluded:
                continue
            free = self.free[pid]
            if len(free) < w.req.gpus:
                continue
            c = self.by_id[pid]
            fitting = [g["index"] for g in c.gpus
                       if g["index"] in free and gpu_fits(w.req, str(g["model"]),
                                                       int(g["memory_mb"]))]
            if len(fitting) < w.req.gpus:
                continue
            chosen = fitting[: w.req.gpus]
            self.free[pid] = [i for i in free if i not in chosen]
            return pid, chosen
        return None


def plan(
    waiting: Iterable[Waiting],
    candidates: Iterable[Candidate],
    held_by_client: Mapping[str, int],
    *,
    fair_share: bool = True,
    max_gpus_per_client: int = 0,
    home_region: str = "",
    served: Mapping[str, int] | None = None,
    timings: list[float] | None = None,
    owners: Mapping[str, str] | None = None,
    now: float | None = None,
) -> Plan:
    """Place as many waiting jobs as fit, in fair order; say why the others wait.

    `owners` (provider id -> owning account) keeps the replicas of one job placed in this
    round on providers of distinct owners; a provider without one is its own owner. At
    `now` (unix time), an owner's providers that rest (domain/resting.py) are every job's
    last resort; with no `now`, none rests."""
    pool = _Pool(candidates, home_region, owners, now)
    ordered = fair_order(waiting, held_by_client, fair_share, served)
    for req in {w.req for w in ordered}:  # rank once per kind of job, before deciding
        pool.ranked(req)
    held = defaultdict(int, held_by_client)
    chosen_for: dict[str, set[str]] = defaultdict(set)  # replicas never share a provider
    siblings: dict[str, set[str]] = defaultdict(set)  # owner -> its providers
    for provider_id, owner in (owners or {}).items():
        siblings[owner].add(provider_id)
    result = Plan()
    for w in ordered:
        key = (w.job_id, w.attempt)
        if max_gpus_per_client and held[w.client_id] + w.req.gpus > max_gpus_per_client:
            result.waiting[key] = (
                f"client {w.client_id} holds {held[w.client_id]} of its "
                f"{max_gpus_per_client} GPUs"
            )
            continue
        if timings is None:
            taken = pool.take(w, chosen_for[w.job_id])
        else:  # bench/matching.py: how long one decision takes
            started = time.perf_counter()
            taken = pool.take(w, chosen_for[w.job_id])
            timings.append(time.perf_counter() - started)
        if taken is None:
            result.waiting[key] = "no eligible GPUs free"
            continue
        pid, gpus = taken
        chosen_for[w.job_id].update(siblings.get(owners.get(pid, pid), {pid}) if owners
                                    else {pid})
        held[w.client_id] += len(gpus)
        price = pool.by_id[pid].price_per_gpu_hour_micro
        result.placements.append(Placement(w.job_id, w.attempt, w.client_id, pid, gpus, price))
    return result


def positions(
    waiting: Iterable[Waiting],
    held_by_client: Mapping[str, int],
    fair_share: bool = True,
    served: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Each waiting job's place in line (1 is next), by its first waiting allocation."""
    line: dict[str, int] = {}
    for w in fair_order(waiting, held_by_client, fair_share, served):
        line.setdefault(w.job_id, len(line) + 1)
    return line


__all__ = ["Placement", "Plan", "Waiting", "fair_order", "plan", "positions", "resting",
           "score"]
