"""The Network application: every command the control plane issues, as events.

Thin: each method loads aggregates, lets them check and apply, saves the
changed ones together (one transaction), and returns primitives. Every method
is safe to call twice with the same arguments.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, OperationalError

from domain.canary import Canary, CanaryEnded, CanaryStarted, make_canary
from domain.errors import (
    DomainError,
    InsufficientFunds,
    InvalidAmount,
    InvalidTransition,
    UnknownJob,
    UnknownProvider,
)
from domain.identity import (
    API_KEY_PREFIX,
    ROLES,
    SELF_SERVICE_ROLES,
    SESSION_PREFIX,
    ApiKey,
    Caller,
    Claim,
    IdentityError,
    Issued,
    KeyIssued,
    KeyView,
    Session,
    User,
    UserView,
    caller_of,
    check_key_name,
    check_password,
    check_roles,
    hash_password,
    new_api_key,
    new_session_token,
    new_temporary_password,
    normalise_email,
    password_matches,
    password_needs_rehash,
    secret_hash,
    user_view,
)
from domain.job import Job
from domain.ledger import (
    CHECKS,
    EXTERNAL,
    FEES,
    MAY_GO_NEGATIVE,
    Account,
    client_account,
    escrow_account,
    provider_account,
    transfer,
)
from domain.limits import AMOUNT
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
from domain.money import cost_of_gpu_time
from domain.node import DEFAULT_NODE, DEFAULT_QUEUE, Node, check_name, split_queue
from domain.provider import Directory, Provider, check_declaration
from domain.scheduling import Placement, Waiting
from domain.spec import JobSpec

# Hot accounts (the protocol's fees, a busy provider) make writers collide; each retry
# reloads and decides again, after a jittered pause so colliding writers spread out.
CONFLICT_RETRIES = 60


@dataclass(frozen=True)
class Admission:
    admitted: bool
    max_cost_micro: int
    reason: str


@dataclass(frozen=True)
class Payment:
    provider_id: str
    gpu_ms: int
    price_micro: int
    payer: str = "client"  # "client": a run it asked for; "network": a check the network added


@dataclass(frozen=True)
class SettlementFigures:
    charged_micro: int
    provider_paid_micro: int
    fee_micro: int
    refunded_micro: int


class Network(Application[Any]):
    name = "gpgpu"
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
            raise UnknownJob(f"no job {job_id}")
        return job

    def find_job(self, job_id: str) -> Job | None:
        job: Job | None = self._get_or_none(Job.create_id(job_id=job_id))
        return job

    def provider(self, provider_id: str) -> Provider:
        provider = self._get_or_none(Provider.create_id(provider_id=provider_id))
        if provider is None:
            raise UnknownProvider(f"no provider {provider_id}")
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

    # Accounts

    def deposit(self, client_id: str, amount_micro: int, deposit_id: str) -> int:
        def attempt() -> tuple[int, list[Aggregate]]:
            src, dst = self.account(EXTERNAL), self.account(client_account(client_id))
            transfer(src, dst, f"deposit:{deposit_id}", amount_micro, "deposit")
            return dst.balance_micro, [src, dst]

        return int(self._save_retrying(attempt))

    def grant(self, client_id: str, amount_micro: int, grant_id: str, memo: str) -> int:
        """Credits an admin adds to a client's account from outside the network (a grant:
        its own kind in the ledger, with who granted it and why in the memo)."""
        def attempt() -> tuple[int, list[Aggregate]]:
            src, dst = self.account(EXTERNAL), self.account(client_account(client_id))
            transfer(src, dst, f"grant:{grant_id}", amount_micro, memo)
            return dst.balance_micro, [src, dst]

        return int(self._save_retrying(attempt))

    def withdraw(self, account: str, amount_micro: int, withdrawal_id: str) -> int:
        """Pay money out of a client's or provider's account; refuses an overdraft."""
        if not account.startswith(("client:", "provider:")):
            raise InvalidAmount(f"only client and provider accounts withdraw, not {account}")

        def attempt() -> tuple[int, list[Aggregate]]:
            src, dst = self.account(account), self.account(EXTERNAL)
            transfer(src, dst, f"withdraw:{withdrawal_id}", amount_micro, "withdrawal")
            return src.balance_micro, [src, dst]

        return int(self._save_retrying(attempt))

    def open_client(self, client_id: str, starting_balance_micro: int) -> None:
        """A client's first contact opens its account with the starting balance."""
        self.deposit(client_id, starting_balance_micro, f"welcome:{client_id}")

    # Jobs

    def submit_job(self, job_id: str, client_id: str, spec: JobSpec) -> None:
        if self._get_or_none(Job.create_id(job_id=job_id)) is not None:
            return
        AMOUNT.check("max_cost_micro", spec.max_cost_micro)
        job = Job(
            job_id=job_id,
            client_id=client_id,
            spec=spec.model_dump(mode="json"),
            max_cost_micro=spec.max_cost_micro,
        )
        self.save(job)

    def admit_job(self, job_id: str) -> Admission:
        def attempt() -> tuple[Admission, list[Aggregate]]:
            job = self.job(job_id)
            if job.state == "REJECTED":
                return Admission(False, job.max_cost_micro, job.reason), []
            if "FundsEscrowed" in job.recorded:
                return Admission(True, job.max_cost_micro, ""), []
            client = self.account(client_account(job.client_id))
            escrow = self.account(escrow_account(job_id))
            try:
                transfer(client, escrow, f"escrow:{job_id}", job.max_cost_micro, "escrow")
            except InsufficientFunds:
                reason = (
                    f"insufficient balance: the job may cost up to {job.max_cost_micro} "
                    f"micro-credits, the balance is {client.balance_micro}"
                )
                job.reject(reason)
                return Admission(False, job.max_cost_micro, reason), [job]
            job.record_escrow(job.max_cost_micro)
            job.queue(1)
            return Admission(True, job.max_cost_micro, ""), [job, client, escrow]

        return self._save_retrying(attempt)

    def queue_job(self, job_id: str, attempt_no: int) -> None:
        def attempt() -> tuple[None, list[Aggregate]]:
            job = self.job(job_id)
            job.queue(attempt_no)
            return None, [job]

        self._save_retrying(attempt)

    # Nodes

    def node(self, node_id: str) -> Node:
        """A node; the default node exists from the first time anyone needs it."""
        node = self._get_or_none(Node.create_id(node_id=node_id))
        if node is None and node_id == DEFAULT_NODE:
            node = Node(node_id=DEFAULT_NODE, region="local", operator="network")
            node.configure_queue(DEFAULT_QUEUE, [])
        if node is None:
            raise DomainError(f"node: no node {node_id!r}")
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
            raise DomainError(f"queue: node {node_id!r} has no queue {name!r}")
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
            spec = JobSpec.model_validate(self.job(job_id).spec)
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
        )

    @staticmethod
    def _candidates(providers: Iterable[Provider], online: set[str]) -> list[Candidate]:
        return [
            Candidate(
                provider_id=p.provider_id,
                price_per_gpu_hour_micro=p.price_per_gpu_hour_micro,
                reputation=p.reputation,
                online=p.status == "online" and p.provider_id in online,
                gpus=p.gpus,
                free_gpu_indexes=p.free_gpu_indexes(),
                runtimes=tuple(p.runtimes),
                region=p.region,
                suspended=tuple(p.suspended),
                degraded={int(i): why for i, why in p.degraded.items()},
            )
            for p in providers
        ]

    def explain(self, spec: JobSpec, online: set[str]) -> list[Assessment]:
        """Where this spec could run now, and for every other provider of its node, why not."""
        node_id, queue = split_queue(spec.queue)
        node = self.node(node_id)
        if queue not in node.queues:
            raise DomainError(f"queue: node {node_id!r} has no queue {queue!r}")
        providers = [self.provider(pid) for pid in node.provider_ids]
        return explain(
            self._requirements(spec, node), self._candidates(providers, online), set(), node.region
        )

    def unsatisfiable(self, spec: JobSpec) -> str | None:
        """Why no provider registered on the spec's node could ever run it (its GPUs, their
        model and memory, region, runtime), in words; None when one could."""
        node_id, queue = split_queue(spec.queue)
        node = self.node(node_id)
        if queue not in node.queues:
            raise DomainError(f"queue: node {node_id!r} has no queue {queue!r}")
        providers = [self.provider(pid) for pid in node.provider_ids]
        return unsatisfiable(self._requirements(spec, node),
                             self._candidates(providers, set()), node_id)

    def explain_gpus(self, spec: JobSpec, online: set[str]) -> list[GpuAssessment]:
        """Every GPU of the spec's node: eligible now (best first), or why not."""
        node_id, queue = split_queue(spec.queue)
        node = self.node(node_id)
        if queue not in node.queues:
            raise DomainError(f"queue: node {node_id!r} has no queue {queue!r}")
        providers = [self.provider(pid) for pid in node.provider_ids]
        return explain_gpus(
            self._requirements(spec, node), self._candidates(providers, online), set(), node.region
        )

    # Scheduling (see domain/scheduling.py and activities/scheduler.py)

    def waiting_entry(
        self,
        job_id: str,
        attempt_no: int,
        excluded: set[str],
        job: Job | None = None,
        node: Node | None = None,
    ) -> Waiting:
        """What the scheduler needs to know about one allocation a job waits for."""
        job = job or self.job(job_id)
        spec = JobSpec.model_validate(job.spec)
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
                    raise DomainError(f"job {p.job_id} attempt {p.attempt} is placed already")
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
                f"provider_id: {provider_id} (or its owner) ran another of job "
                f"{job.job_id}'s runs; attempt {attempt_no} must run elsewhere"
            )

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

    def record_step(self, job_id: str, step: str, attempt_no: int, data: dict[str, Any]) -> None:
        self.record_steps(job_id, [(step, attempt_no, data)])

    def record_steps(self, job_id: str, steps: list[tuple[str, int, dict[str, Any]]]) -> None:
        """Steps of one job (step, attempt, data), in order, saved together."""

        def attempt() -> tuple[None, list[Aggregate]]:
            job = self.job(job_id)
            for step, attempt_no, data in steps:
                job.record_step(step, attempt_no, data)
            return None, [job]

        self._save_retrying(attempt)

    def provider_lost(self, job_id: str, attempt_no: int, provider_id: str, reason: str) -> None:
        """The provider stopped answering while it held this job: free, penalise, requeue."""

        def attempt() -> tuple[None, list[Aggregate]]:
            job = self.job(job_id)
            provider = self.provider(provider_id)
            job.record_provider_lost(attempt_no, provider_id, reason)
            provider.release(job_id)
            provider.mark_lost(job_id, reason)
            provider.record_outcome(f"{job_id}#{attempt_no}", "lost")
            return None, [job, provider]

        self._save_retrying(attempt)

    def record_verdict(
        self,
        job_id: str,
        accepted: bool,
        succeeded: bool,
        reason: str,
        accepted_attempt: int | None = None,
    ) -> None:
        def attempt() -> tuple[None, list[Aggregate]]:
            job = self.job(job_id)
            if accepted and accepted_attempt is not None:
                job.accept_result(accepted_attempt)
            job.record_verdict(accepted, succeeded, reason)
            return None, [job]

        self._save_retrying(attempt)

    def settle(
        self,
        job_id: str,
        provider_id: str,
        gpu_ms: int,
        price_micro: int,
        pay_provider: bool,
        fee_bps: int,
    ) -> SettlementFigures:
        """Pay one provider for accepted GPU time, take the fee, refund the rest."""
        payments = [Payment(provider_id, gpu_ms, price_micro)] if pay_provider else []
        return self.settle_many(job_id, payments, fee_bps)

    def settle_many(
        self, job_id: str, payments: list[Payment], fee_bps: int
    ) -> SettlementFigures:
        """Pay every provider whose result was accepted, refund the rest of the escrow.

        The client pays for the runs it asked for, each capped at one run's maximum, and
        the protocol takes its fee from them; the network pays, without a fee, for the
        checks it added on its own.
        """

        def attempt() -> tuple[SettlementFigures, list[Aggregate]]:
            job = self.job(job_id)
            if "FundsEscrowed" not in job.recorded:
                raise InvalidTransition(f"job {job_id} holds no escrow to settle")
            held = job.max_cost_micro
            run_cap = JobSpec.model_validate(job.spec).max_run_cost_micro
            moves: list[tuple[str, str, str, int, str]] = []  # from, to, id, amount, memo
            charged = fee = paid = 0
            for p in payments:
                cost = min(cost_of_gpu_time(p.gpu_ms, p.price_micro), run_cap)
                if p.payer == "network":
                    moves.append((CHECKS, provider_account(p.provider_id),
                                  f"check:{job_id}:{p.provider_id}", cost, "verification run"))
                    continue
                cost = min(cost, held - charged)
                cut = cost * fee_bps // 10_000
                charged, fee, paid = charged + cost, fee + cut, paid + cost - cut
                moves.append((escrow_account(job_id), provider_account(p.provider_id),
                              f"pay:{job_id}:{p.provider_id}", cost - cut, "payment for GPU time"))
                moves.append((escrow_account(job_id), FEES, f"fee:{job_id}:{p.provider_id}",
                              cut, "protocol fee"))
            moves.append((escrow_account(job_id), client_account(job.client_id),
                          f"refund:{job_id}", held - charged, "escrow refund"))
            figures = SettlementFigures(charged, paid, fee, held - charged)
            if job.settlement is not None:
                if SettlementFigures(**job.settlement) != figures:
                    raise InvalidTransition(
                        f"job {job_id} is already settled ({job.settlement}); "
                        f"refusing a second settlement ({figures})"
                    )
                return figures, []  # a retry of the same settlement
            # Several runs paid to one provider share its transfer ids (pay:, fee:, check:):
            # one transfer each, of their sum. Posted apart, the second would be skipped as
            # already posted and its money left in escrow for good.
            merged: dict[str, tuple[str, str, str, int, str]] = {}
            for source, target, transfer_id, amount, memo in moves:
                if transfer_id in merged:
                    amount += merged[transfer_id][3]
                merged[transfer_id] = (source, target, transfer_id, amount, memo)
            accounts: dict[str, Account] = {}
            for source, target, transfer_id, amount, memo in merged.values():
                if amount:
                    for name in (source, target):
                        if name not in accounts:  # load each account once per settlement
                            accounts[name] = self.account(name)
                    src, dst = accounts[source], accounts[target]
                    transfer(src, dst, transfer_id, amount, memo)
            job.record_settlement(charged, paid, fee, held - charged)
            return figures, [job, *accounts.values()]

        return self._save_retrying(attempt)

    def record_reputation(self, job_id: str, provider_id: str, outcome: str) -> None:
        """`job_id` is the outcome's key: the job's id, or `<job id>#<attempt>` for one of
        several runs; the job's own stream shows it too (ReputationRecorded)."""

        def attempt() -> tuple[None, list[Aggregate]]:
            provider = self.provider(provider_id)
            provider.record_outcome(job_id, outcome)
            job = self._get_or_none(Job.create_id(job_id=job_id.split("#", 1)[0]))
            if job is None:
                return None, [provider]
            job.note_reputation(provider_id, job_id, outcome)
            return None, [provider, job]

        self._save_retrying(attempt)

    def release_gpus(self, job_id: str, provider_id: str) -> None:
        def attempt() -> tuple[None, list[Aggregate]]:
            provider = self.provider(provider_id)
            if job_id not in provider.reservations:
                return None, []
            provider.release(job_id)
            job = self._get_or_none(Job.create_id(job_id=job_id))
            if job is None:
                return None, [provider]
            job.note_released(provider_id)
            return None, [provider, job]

        self._save_retrying(attempt)

    def record_unplaced(self, job_id: str, attempt_no: int, purpose: str, reason: str) -> None:
        """The workflow stopped waiting for this run's GPUs; a placement that raced the
        give-up is released at once (the run never starts)."""

        def attempt() -> tuple[None, list[Aggregate]]:
            job = self.job(job_id)
            changed: list[Aggregate] = [job]
            job.record_unplaced(attempt_no, purpose, reason)
            placed_on = job.allocations.get(attempt_no)
            if placed_on is not None:
                provider = self.provider(placed_on)
                if job_id in provider.reservations:
                    provider.release(job_id)
                    job.note_released(placed_on)
                    changed.append(provider)
            return None, changed

        self._save_retrying(attempt)

    def finish_job(
        self, job_id: str, succeeded: bool, reason: str, cancelled: bool = False
    ) -> None:
        def attempt() -> tuple[None, list[Aggregate]]:
            job = self.job(job_id)
            job.finish(succeeded, reason, cancelled)
            # A finished job holds no GPU, even one placed as its workflow stopped waiting.
            leftovers = []
            for provider_id in sorted(set(job.allocations.values())):
                provider = self.provider(provider_id)
                if job_id in provider.reservations:
                    provider.release(job_id)
                    job.note_released(provider_id)
                    leftovers.append(provider)
            return None, [job, *leftovers]

        self._save_retrying(attempt)

    def end_abandoned(self, job_id: str, reason: str, fee_bps: int) -> bool:
        """End a job whose workflow stopped without ending it (an operator terminated it):
        no result was verified, so the escrow goes back whole (a settlement already made
        stands), its GPUs are released, and it fails with `reason`. False if it had ended."""
        job = self.job(job_id)
        if job.ended:
            return False
        if "FundsEscrowed" in job.recorded and job.settlement is None:
            self.settle_many(job_id, [], fee_bps)
        self.finish_job(job_id, False, reason)
        return True

    # Canaries (see domain/canary.py, workflows/canary.py, activities/canary.py)

    def canary(self, origin_job_id: str, provider_id: str) -> Canary | None:
        """The canary that followed this job on this provider, if there was one."""
        return self._get_or_none(
            Canary.create_id(origin_job_id=origin_job_id, provider_id=provider_id)
        )

    def start_canary(
        self,
        origin_job_id: str,
        provider_id: str,
        seed: str,
        online: set[str],
        image: str | None = None,
    ) -> CanaryStarted:
        """Submit a known-answer job to exactly this provider and reserve its GPUs there.

        Skipped, with nothing recorded, when the provider is offline, has no free GPU
        or no runtime a canary fits. Called again, it answers what it did the first time.
        """

        def attempt() -> tuple[CanaryStarted, list[Aggregate]]:
            known = self.canary(origin_job_id, provider_id)
            if known is not None:
                return CanaryStarted(True, "", known.job_id, known.client_id,
                                     tuple(known.gpu_indexes), known.price_micro), []
            provider = self._get_or_none(Provider.create_id(provider_id=provider_id))
            if provider is None:
                return CanaryStarted(False, f"no provider {provider_id}"), []
            if provider.status != "online" or provider_id not in online:
                return CanaryStarted(False, f"{provider_id} is offline"), []
            price = provider.price_per_gpu_hour_micro
            task = make_canary(seed, price, provider.runtimes, image)
            if task is None:
                return CanaryStarted(
                    False, f"no canary fits {provider_id}'s runtimes ({provider.runtimes}) "
                    "without a canary image"), []
            free = provider.free_gpu_indexes()
            if len(free) < task.spec.resources.gpus:
                return CanaryStarted(False, f"{provider_id} has no free GPU"), []
            gpus = free[: task.spec.resources.gpus]
            job = Job(
                job_id=task.job_id,
                client_id=task.client_id,
                spec=task.spec.model_dump(mode="json"),
                max_cost_micro=task.spec.max_cost_micro,
            )
            provider.reserve(task.job_id, gpus, task.client_id)
            job.record_allocation(1, provider_id, gpus, price)
            canary = Canary(
                origin_job_id=origin_job_id, provider_id=provider_id, job_id=task.job_id,
                client_id=task.client_id, seed=seed, gpu_indexes=gpus, price_micro=price,
                expected=[vars(e) for e in task.expected],
            )
            started = CanaryStarted(True, "", task.job_id, task.client_id, tuple(gpus), price)
            return started, [provider, job, canary]

        return self._save_retrying(attempt)

    def close_canary(
        self, origin_job_id: str, provider_id: str, outcome: str, reason: str, gpu_ms: int
    ) -> CanaryEnded:
        """End a canary: pay an honest provider, record its outcome, finish the job.

        "success" pays the GPU time at the price it was reserved at (at most the job's
        timeout) from the network's verification account, without a fee; any other
        outcome pays nothing. A judged outcome becomes the provider's reputation
        outcome for the job; "lost" was recorded when it was lost, "void" is none.
        """

        def attempt() -> tuple[CanaryEnded, list[Aggregate]]:
            canary = self.canary(origin_job_id, provider_id)
            if canary is None:
                raise UnknownJob(f"no canary after job {origin_job_id} on {provider_id}")
            if canary.outcome is not None:
                return CanaryEnded(canary.outcome, canary.reason, canary.paid_micro), []
            job, provider = self.job(canary.job_id), self.provider(provider_id)
            changed: list[Aggregate] = [canary, job, provider]
            honest, paid = outcome == "success", 0
            if honest:
                cap = JobSpec.model_validate(job.spec).max_run_cost_micro
                paid = min(cost_of_gpu_time(gpu_ms, canary.price_micro), cap)
                src, dst = self.account(CHECKS), self.account(provider_account(provider_id))
                transfer(src, dst, f"check:{job.job_id}:{provider_id}", paid, "verification run")
                changed += [src, dst]
                if 1 in job.manifests:
                    job.accept_result(1)
            if outcome not in ("lost", "void"):
                provider.record_outcome(job.job_id, outcome)
            job.record_verdict(honest, honest, reason)
            job.record_settlement(0, paid, 0, 0)
            job.finish(honest, reason)
            provider.release(job.job_id)
            canary.close(outcome, reason, paid)
            return CanaryEnded(outcome, reason, paid), changed

        return self._save_retrying(attempt)

    # Identity

    def user(self, user_id: str | UUID) -> User | None:
        found = self._get_or_none(UUID(str(user_id)))
        return found if isinstance(found, User) else None

    def user_by_email(self, email: str) -> User | None:
        try:
            normal = normalise_email(email)
        except IdentityError:
            return None
        return self._get_or_none(User.create_id(email=normal))

    def _start_session(self, user: User, now: float, ttl_s: float) -> tuple[str, Session]:
        token = new_session_token()
        session = Session(token_hash=secret_hash(token), user_id=user.id, started_at=now,
                          expires_at=now + ttl_s)
        return token, session

    def sign_up(
        self, email: str, password: str, roles: list[str], now: float, session_ttl_s: float
    ) -> Issued:
        """A new account with the roles asked for (never admin) and a session for it."""
        normal = normalise_email(email)
        check_password(password)
        chosen = check_roles(roles, SELF_SERVICE_ROLES)
        password_hash = hash_password(password)

        def attempt() -> tuple[Issued, list[Aggregate]]:
            if self._get_or_none(User.create_id(email=normal)) is not None:
                raise IdentityError("email: already registered")
            user = User(email=normal, password_hash=password_hash, roles=chosen, at=now)
            token, session = self._start_session(user, now, session_ttl_s)
            return Issued(token, user_view(user)), [user, session]

        return self._save_retrying(attempt)

    def sign_in(self, email: str, password: str, now: float, session_ttl_s: float) -> Issued:
        user = self.user_by_email(email)
        if not password_matches(user.password_hash if user else None, password) or user is None:
            raise IdentityError("password: the email and password do not match an account")
        changed: list[Aggregate] = []
        if password_needs_rehash(user.password_hash):
            user.rehash_password(hash_password(password))
            changed.append(user)
        token, session = self._start_session(user, now, session_ttl_s)
        self.save(*changed, session)
        return Issued(token, user_view(user))

    def change_password(
        self, user_id: str, current: str, new: str, now: float, session_ttl_s: float
    ) -> Issued:
        """The account's own new password; its other sessions end, this answer is a new one."""
        check_password(new, "newPassword")
        password_hash = hash_password(new)
        user = self.user(user_id)
        if user is None:
            raise IdentityError("user: no such account")
        if not password_matches(user.password_hash, current):
            raise IdentityError("currentPassword: does not match the account's password")
        user.set_password(password_hash, now)
        token, session = self._start_session(user, now, session_ttl_s)
        self.save(user, session)
        return Issued(token, user_view(user))

    def reset_password(self, email: str, now: float) -> str:
        """An admin's reset for someone locked out: a temporary password, returned once, in
        place of theirs; every session of the account ends."""
        user = self.user_by_email(email)
        if user is None:
            raise IdentityError(f"email: no account has {normalise_email(email)!r}")
        temporary = new_temporary_password()
        user.set_password(hash_password(temporary), now)
        self.save(user)
        return temporary

    def add_roles(self, user_id: str, roles: list[str]) -> UserView:
        """More roles for yourself (never admin): a client who also offers GPUs, say."""
        chosen = check_roles(roles, SELF_SERVICE_ROLES)

        def attempt() -> tuple[UserView, list[Aggregate]]:
            user = self.user(user_id)
            if user is None:
                raise IdentityError("user: no such account")
            for role in chosen:
                user.grant_role(role)
            return user_view(user), [user]

        return self._save_retrying(attempt)

    def revoke_role(self, email: str, role: str) -> UserView:
        """An admin takes a role from an account (it keeps one at least)."""

        def attempt() -> tuple[UserView, list[Aggregate]]:
            user = self.user_by_email(email)
            if user is None:
                raise IdentityError(f"email: no account has {normalise_email(email)!r}")
            user.revoke_role(role)
            return user_view(user), [user]

        return self._save_retrying(attempt)

    def create_user(
        self, email: str, password: str, roles: list[str], now: float
    ) -> UserView:
        """An account made by an operator on the stores (any roles, admin too). An existing
        account keeps its password and gains the roles it lacked."""
        normal = normalise_email(email)
        chosen = check_roles(roles, ROLES)
        user = self.user_by_email(normal)
        if user is None:
            check_password(password)
            user = User(email=normal, password_hash=hash_password(password), roles=chosen, at=now)
        for role in chosen:
            user.grant_role(role)
        self.save(user)
        return user_view(user)

    def sign_out(self, session_id: str, now: float) -> bool:
        session = self._get_or_none(UUID(session_id))
        if not isinstance(session, Session) or session.ended_at is not None:
            return False
        session.end(now)
        self.save(session)
        return True

    def create_api_key(
        self, user_id: str, name: str, scopes: list[str], allowed: list[str], now: float
    ) -> KeyIssued:
        """A new key for the user, scoped to some of the roles the caller acts as (`allowed`)."""
        name = check_key_name(name)
        chosen = check_roles(scopes, tuple(allowed), "scopes")

        def attempt() -> tuple[KeyIssued, list[Aggregate]]:
            user = self.user(user_id)
            if user is None:
                raise IdentityError("user: no such account")
            key = new_api_key()
            api_key = ApiKey(key_hash=secret_hash(key), user_id=user.id, name=name,
                             scopes=chosen, at=now)
            user.add_api_key(str(api_key.id), name, chosen, now)
            view = KeyView(str(api_key.id), name, chosen, now)
            return KeyIssued(key, view), [user, api_key]

        return self._save_retrying(attempt)

    def api_keys(self, user_id: str) -> list[KeyView]:
        user = self.user(user_id)
        if user is None:
            return []
        return [KeyView(k, v["name"], list(v["scopes"]), v["created_at"])
                for k, v in sorted(user.active_keys().items(), key=lambda kv: kv[1]["created_at"])]

    def revoke_api_key(self, user_id: str | None, key_id: str, now: float) -> bool:
        """Revoke one of the user's keys (user_id None: an admin revokes anyone's)."""
        try:
            aggregate_id = UUID(key_id)
        except ValueError:
            raise IdentityError(f"id: no API key {key_id!r} of yours") from None

        def attempt() -> tuple[bool, list[Aggregate]]:
            api_key = self._get_or_none(aggregate_id)
            if not isinstance(api_key, ApiKey) or (
                user_id is not None and str(api_key.user_id) != user_id
            ):
                raise IdentityError(f"id: no API key {key_id!r} of yours")
            if api_key.revoked_at is not None:
                return False, []
            owner = self.user(api_key.user_id)
            api_key.revoke(now)
            if owner is None:
                return True, [api_key]
            owner.revoke_api_key(key_id, now)
            return True, [api_key, owner]

        return self._save_retrying(attempt)

    def authenticate(self, token: str, now: float) -> Caller | None:
        """The caller a bearer token (a session token or an API key) stands for, or None."""
        if token.startswith(SESSION_PREFIX):
            session = self._get_or_none(Session.create_id(token_hash=secret_hash(token)))
            if not isinstance(session, Session) or not session.valid_at(now):
                return None
            user = self.user(session.user_id)
            if user is None or not user.session_current(session):
                return None
            return caller_of(user, "session", str(session.id))
        if token.startswith(API_KEY_PREFIX):
            api_key = self._get_or_none(ApiKey.create_id(key_hash=secret_hash(token)))
            if not isinstance(api_key, ApiKey) or api_key.revoked_at is not None:
                return None
            user = self.user(api_key.user_id)
            if user is None:
                return None
            return caller_of(user, "api_key", str(api_key.id), list(api_key.scopes))
        return None

    def same_owner(self, provider_ids: set[str]) -> set[str]:
        """These providers and every other provider of their owners' accounts: a job's check
        runs are on providers of distinct owners, or one owner could agree with itself."""
        found = set(provider_ids)
        owners = {self.owner_of("provider", pid) for pid in provider_ids}
        for owner in owners - {None}:
            user = self.user(str(owner))
            if user is not None:
                found.update(user.provider_ids)
        return found

    def owner_of(self, kind: str, key: str) -> str | None:
        """The user id that owns this provider or node id, if anyone does."""
        claim = self._get_or_none(Claim.create_id(kind=kind, key=key))
        return str(claim.user_id) if isinstance(claim, Claim) else None

    def hand_over(self, kind: str, key: str, user_id: str) -> None:
        """An operator's command on the stores: this provider or node id is the user's now
        (its former owner's sessions and keys stop managing it)."""

        def attempt() -> tuple[None, list[Aggregate]]:
            user = self.user(user_id)
            if user is None:
                raise IdentityError("user: no such account")
            claim = self._get_or_none(Claim.create_id(kind=kind, key=key))
            if claim is None:
                claim = Claim(kind=kind, key=key, user_id=user.id)
                changed: list[Aggregate] = [claim, user]
            elif claim.user_id == user.id:
                changed = [claim, user]
            else:
                former = self.user(claim.user_id)
                claim.hand_over(user.id)
                changed = [claim, user]
                if former is not None:
                    former.release(kind, key)
                    changed.append(former)
            user.own(kind, key)
            return None, changed

        self._save_retrying(attempt)

    def claim(self, kind: str, key: str, user_id: str) -> None:
        """The user owns this provider or node id from now on; refused if another user does."""
        field = "providerId" if kind == "provider" else "nodeId"

        def attempt() -> tuple[None, list[Aggregate]]:
            user = self.user(user_id)
            if user is None:
                raise IdentityError("user: no such account")
            claim = self._get_or_none(Claim.create_id(kind=kind, key=key))
            if claim is None:
                claim = Claim(kind=kind, key=key, user_id=user.id)
            elif claim.user_id != user.id:
                raise IdentityError(f"{field}: {key!r} belongs to another account")
            user.own(kind, key)
            return None, [claim, user]

        self._save_retrying(attempt)
