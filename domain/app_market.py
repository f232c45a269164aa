"""The market: nodes and their queues, providers and their GPUs, allocation and the
scheduler's placements, and the providers' own controls."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from domain.app_base import NAME
from domain.app_identity import Ownership
from domain.errors import (
    DomainError,
    InvalidTransition,
)
from domain.fleet import FleetCopies, candidate
from domain.job import Job
from domain.matching import (
    Assessment,
    Candidate,
    Decision,
    GpuAssessment,
    Requirements,
    decide,
    explain,
    explain_gpus,
    gb_to_mib,
    unsatisfiable,
)
from domain.node import DEFAULT_NODE, DEFAULT_QUEUE, Node, check_name, split_queue
from domain.provider import Directory, Provider, check_declaration
from domain.scheduling import Placement, Waiting, resting
from protocol.spec import JobSpec

# A process that read no fleet for this many notifications loads its copies again rather
# than read them all (domain/fleet.py).
FLEET_CATCH_UP = 50_000


class Market(Ownership):
    """Nodes, their queues and providers, and placing jobs on GPUs (which reads who owns a
    provider: replicas of one job go to distinct owners)."""

    name = NAME  # eventsourcing names an application after its class otherwise
    _fleet: FleetCopies | None = None  # for the reads of a node's whole fleet (_fleet_of)
    _fleet_lock = threading.Lock()

    # Nodes

    def node(self, node_id: str) -> Node:
        """A node; the default node exists from the first time anyone needs it."""
        node = self._get_or_none(Node.create_id(node_id=node_id))
        if node is None and node_id == DEFAULT_NODE:
            node = Node(node_id=DEFAULT_NODE, region="local", operator="network")
            node.configure_queue(DEFAULT_QUEUE, [])
        if node is None:
            raise DomainError("node", f"no node {node_id!r}")
        return node

    def register_node(self, node_id: str, region: str, operator: str) -> None:
        """A node joins the network with a default queue that serves any GPU."""
        check_name("node", node_id)

        def attempt() -> tuple[None, list[Aggregate]]:
            if self._get_or_none(Node.create_id(node_id=node_id)) is not None:
                return None, []
            node = Node(node_id=node_id, region=region, operator=operator)
            node.configure_queue(DEFAULT_QUEUE, [])
            return None, [node]

        self._save_retrying(attempt)

    def configure_queue(
        self,
        node_id: str,
        name: str,
        gpu_models: list[str],
        priority_levels: int = 1,
        max_gpus_per_client: int = 0,
        fair_share: bool = True,
    ) -> None:
        def attempt() -> tuple[None, list[Aggregate]]:
            node = self.node(node_id)
            node.configure_queue(name, gpu_models, priority_levels, max_gpus_per_client,
                                 fair_share)
            return None, [node]

        self._save_retrying(attempt)

    def check_queue(self, queue: str, priority: int = 0) -> None:
        node_id, name = split_queue(queue)
        node = self.node(node_id)
        if name not in node.queues:
            raise DomainError("queue", f"node {node_id!r} has no queue {name!r}")
        node.check_priority(name, priority)

    # Providers

    def register_provider(
        self,
        provider_id: str,
        region: str,
        price_micro: int,
        gpus: list[dict[str, Any]],
        runtimes: list[str] | None = None,
        node_id: str = DEFAULT_NODE,
        sandbox: str | None = None,
    ) -> None:
        check_declaration(price_micro, gpus)

        def attempt() -> tuple[None, list[Aggregate]]:
            provider = self._get_or_none(Provider.create_id(provider_id=provider_id))
            directory = self._get_or_none(Directory.create_id()) or Directory()
            if provider is None:
                provider = Provider(
                    provider_id=provider_id,
                    region=region,
                    price_per_gpu_hour_micro=price_micro,
                    gpus=gpus,
                )
            else:
                provider.rejoin(region, price_micro, gpus)
            provider.declare_runtimes(runtimes or ["process"])
            if sandbox is not None:
                provider.declare_sandbox(sandbox)
            directory.add(provider_id)
            node = self.node(node_id)
            node.admit_provider(provider_id)
            return None, [provider, directory, node]

        self._save_retrying(attempt)

    def provider_ids(self) -> list[str]:
        directory = self._get_or_none(Directory.create_id())
        return [] if directory is None else list(directory.provider_ids)

    def allocate(
        self, job_id: str, attempt_no: int, excluded: set[str], online: set[str]
    ) -> Decision:
        """Reserve GPUs for the job, or say why none fit. Never books a GPU twice."""

        def attempt() -> tuple[Decision, list[Aggregate]]:
            spec = JobSpec.recorded(self.job(job_id).spec)
            node_id, queue = split_queue(spec.queue)
            node = self.node(node_id)
            if queue not in node.queues:
                return Decision(None, rejected={"*": f"queue {spec.queue} does not exist"}), []
            # Providers before the job: the job and its reservation are saved together, so a
            # reservation seen here is always matched by the job's record below.
            providers = {pid: self.provider(pid) for pid in node.provider_ids}
            job = self.job(job_id)
            if attempt_no in job.allocations:  # this allocation ran before (a retry, a twin)
                held = self.provider(job.allocations[attempt_no])  # as fresh as the job
                return Decision(
                    held.provider_id,
                    held.reservations.get(job_id, []),
                    held.price_per_gpu_hour_micro,
                ), []
            if job.ended:  # refused before matching: "no provider" would hide why
                raise InvalidTransition(
                    "", f"job {job_id} is {job.state}; cannot allocate attempt {attempt_no}")
            # Replicas of one job never share a provider, nor an owner (also once a run's
            # GPUs went back).
            holding = self.same_owner({pid for pid, p in providers.items()
                                       if job_id in p.reservations} | job.ran_on(attempt_no))
            decision = decide(
                self._requirements(spec, node),
                self._candidates(providers.values(), online),
                excluded | holding,
                node.region,
            )
            if decision.provider_id is None:
                return decision, []
            chosen = providers[decision.provider_id]
            chosen.reserve(job_id, decision.gpu_indexes, job.client_id)
            job.record_allocation(
                attempt_no,
                decision.provider_id,
                decision.gpu_indexes,
                decision.price_per_gpu_hour_micro,
            )
            return decision, [chosen, job]

        return self._save_retrying(attempt)

    @staticmethod
    def _requirements(spec: JobSpec, node: Node) -> Requirements:
        _, queue = split_queue(spec.queue)
        return Requirements(
            gpus=spec.resources.gpus,
            gpu_model=spec.resources.gpu_model,
            min_gpu_memory_mb=gb_to_mib(spec.resources.min_gpu_memory_gb),
            max_price_per_gpu_hour_micro=spec.max_price_micro,
            runtime=spec.runtime,
            queue_models=tuple(node.queues[queue]["gpu_models"]),
            region=spec.resources.region,
            min_reputation=spec.resources.min_reputation,
            isolation=spec.resources.isolation,
        )

    @staticmethod
    def _candidates(providers: Iterable[Provider], online: set[str]) -> list[Candidate]:
        return [candidate(p, p.provider_id in online) for p in providers]

    def _copies(self) -> FleetCopies:
        with self._fleet_lock:
            if self._fleet is None:
                self._fleet = FleetCopies(self, catch_up=FLEET_CATCH_UP)
            return self._fleet

    def _fleet_of(self, spec: JobSpec, online: set[str]
                  ) -> tuple[Requirements, list[Candidate], Node]:
        """The spec's requirements, and its node's providers as this process's copies have
        them (domain/fleet.py: kept current from the log, not loaded one by one)."""
        node_id, queue = split_queue(spec.queue)
        node, candidates = self._copies().of_node(node_id, online)
        if queue not in node.queues:
            raise DomainError("queue", f"node {node_id!r} has no queue {queue!r}")
        return self._requirements(spec, node), candidates, node

    def explain(self, spec: JobSpec, online: set[str]) -> list[Assessment]:
        """Where this spec could run now, and for every other provider of its node, why not."""
        req, candidates, node = self._fleet_of(spec, online)
        # Only an owner with a loss can rest: the owners of the providers that lost a run,
        # and their other providers (a node's whole fleet would be a load each).
        owners = self.with_mates(
            self._copies().owners([c.provider_id for c in candidates if c.streak[1]]))
        return explain(req, candidates, set(), node.region,
                       resting(candidates, owners, time.time()))

    def unsatisfiable(self, spec: JobSpec) -> str | None:
        """Why no provider registered on the spec's node could ever run it (its GPUs, their
        model and memory, region, runtime), in words; None when one could."""
        req, candidates, node = self._fleet_of(spec, set())
        return unsatisfiable(req, candidates, node.node_id)

    def explain_gpus(self, spec: JobSpec, online: set[str]) -> list[GpuAssessment]:
        """Every GPU of the spec's node: eligible now (best first), or why not."""
        req, candidates, node = self._fleet_of(spec, online)
        return explain_gpus(req, candidates, set(), node.region)

    # Scheduling (see domain/scheduling.py and activities/scheduler.py)

    def waiting_entry(
        self,
        job_id: str,
        attempt_no: int,
        excluded: set[str],
        job: Job | None = None,
        node: Node | None = None,
        avoided: set[str] | None = None,
    ) -> Waiting:
        """What the scheduler needs to know about one allocation a job waits for."""
        job = job or self.job(job_id)
        spec = JobSpec.recorded(job.spec)
        node = node or self.node(split_queue(spec.queue)[0])
        return Waiting(
            job_id=job_id,
            attempt=attempt_no,
            client_id=job.client_id,
            priority=spec.priority,
            queued_at=job.created_on.timestamp(),
            req=self._requirements(spec, node),
            excluded=frozenset(excluded),
            queue=spec.queue,
            avoided=frozenset(avoided or set()),
        )

    def place(
        self,
        placements: list[Placement],
        providers: dict[str, Provider],
        jobs: dict[str, Job] | None = None,
    ) -> list[bool]:
        """Write a round's placements: each job's allocation and its provider's reservation.

        `providers` (and `jobs`, if given) are the scheduler's copies, updated in place.
        All placements go in one transaction; if any copy was stale, the whole batch is
        refused by the store and each placement is then tried alone on fresh copies, so a
        conflict costs a retry, never a double booking. Returns which were written.
        """
        if not placements:
            return []
        jobs = {} if jobs is None else jobs
        changed: dict[str, Aggregate] = {}
        try:
            for p in placements:
                job = jobs.get(p.job_id) or self.job(p.job_id)
                jobs[p.job_id] = job
                if p.attempt in job.allocations:  # another scheduler placed it meanwhile
                    raise DomainError("", f"job {p.job_id} attempt {p.attempt} is placed already")
                self._check_independent(job, p.attempt, p.provider_id)
                provider = providers[p.provider_id]
                provider.reserve(p.job_id, p.gpu_indexes, p.client_id)
                job.record_allocation(p.attempt, p.provider_id, p.gpu_indexes,
                                      p.price_per_gpu_hour_micro)
                changed[f"p:{p.provider_id}"], changed[f"j:{p.job_id}"] = provider, job
            self.save(*changed.values())
            return [True] * len(placements)
        except (IntegrityError, DomainError):
            pass
        # Slow path: fresh copies, one placement per transaction.
        for pid in {p.provider_id for p in placements}:
            providers[pid] = self.provider(pid)
        for p in placements:
            jobs.pop(p.job_id, None)
        written = []
        for p in placements:
            try:
                job, provider = self.job(p.job_id), self.provider(p.provider_id)
                if job.allocations.get(p.attempt) is not None:
                    written.append(job.allocations[p.attempt] == p.provider_id)
                    continue
                self._check_independent(job, p.attempt, p.provider_id)
                provider.reserve(p.job_id, p.gpu_indexes, p.client_id)
                job.record_allocation(p.attempt, p.provider_id, p.gpu_indexes,
                                      p.price_per_gpu_hour_micro)
                self.save(provider, job)
                providers[p.provider_id] = provider
                written.append(True)
            except (IntegrityError, DomainError):
                providers[p.provider_id] = self.provider(p.provider_id)
                written.append(False)
        return written

    def _check_independent(self, job: Job, attempt_no: int, provider_id: str) -> None:
        """Refuse to place a run of a job on a provider, or an owner, that ran another of its
        runs: replicas, checks and verifiers are independent, also once a run gave its GPUs
        back and whatever a scheduler's copies missed."""
        ran = job.ran_on(attempt_no)
        if ran and provider_id in self.same_owner(ran):
            raise DomainError(
                "provider_id", f"{provider_id} (or its owner) ran another of job "
                f"{job.job_id}'s runs; attempt {attempt_no} must run elsewhere")

    # Providers' own controls

    def _provider_change(self, provider_id: str, change: Any) -> None:
        def attempt() -> tuple[None, list[Aggregate]]:
            provider = self.provider(provider_id)
            change(provider)
            return None, [provider]

        self._save_retrying(attempt)

    def suspend_gpu(self, provider_id: str, index: int) -> None:
        self._provider_change(provider_id, lambda p: p.suspend_gpu(index))

    def resume_gpu(self, provider_id: str, index: int) -> None:
        self._provider_change(provider_id, lambda p: p.resume_gpu(index))

    def set_price(self, provider_id: str, price_micro: int) -> None:
        self._provider_change(provider_id, lambda p: p.set_price(price_micro))

    def report_gpu_health(self, provider_id: str, index: int, healthy: bool, reason: str) -> None:
        self._provider_change(provider_id, lambda p: p.report_health(index, healthy, reason))

    def provider_offline(self, provider_id: str, reason: str) -> None:
        self._provider_change(provider_id, lambda p: p.go_offline(reason))

    def provider_online(self, provider_id: str) -> None:
        self._provider_change(provider_id, lambda p: p.come_online())
