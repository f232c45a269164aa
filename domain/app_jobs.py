"""Jobs and the ledger: a job's lifecycle from submission to settlement, and the accounts
it moves money between."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eventsourcing.domain import Aggregate

from domain.app_base import NAME, Base
from domain.errors import InsufficientFunds, InvalidAmount, InvalidTransition
from domain.job import Job, env_names_only
from domain.ledger import (
    CHECKS,
    EXTERNAL,
    FEES,
    Account,
    client_account,
    escrow_account,
    provider_account,
    transfer,
)
from domain.limits import AMOUNT, MAX_OUTVOTES, MAX_SPENT_MICRO
from domain.reputation import OUTVOTED
from protocol.money import cost_of_gpu_time
from protocol.spec import JobSpec


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
    # The client pays for the run's GPU time but its provider is not paid: the network keeps
    # it (a run nothing verified: a timeout with no outputs, or an exit 0 with outputs
    # missing, that no other run reproduced; JobWorkflow decides).
    withheld: bool = False


@dataclass(frozen=True)
class SettlementFigures:
    charged_micro: int
    provider_paid_micro: int
    fee_micro: int
    refunded_micro: int


class Jobs(Base):
    """Accounts and a job's lifecycle: escrow, steps, verdict, settlement, reputation."""

    name = NAME  # eventsourcing names an application after its class otherwise

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
            raise InvalidAmount("", f"only client and provider accounts withdraw, not {account}")

        def attempt() -> tuple[int, list[Aggregate]]:
            src, dst = self.account(account), self.account(EXTERNAL)
            transfer(src, dst, f"withdraw:{withdrawal_id}", amount_micro, "withdrawal")
            return src.balance_micro, [src, dst]

        return int(self._save_retrying(attempt))

    def open_client(self, client_id: str, starting_balance_micro: int) -> None:
        """A client's first contact opens its account with the starting balance."""
        self.deposit(client_id, starting_balance_micro, f"welcome:{client_id}")

    def available_micro(self, client_id: str, starting_balance_micro: int) -> int:
        """What the client could put in escrow now: its balance, with the starting balance
        `open_client` would deposit first where it has not yet (records nothing)."""
        account = self.account(client_account(client_id))
        welcomed = account.has_posted(f"deposit:welcome:{client_id}")
        return int(account.balance_micro) + (0 if welcomed else starting_balance_micro)

    # Jobs

    def submit_job(self, job_id: str, client_id: str, spec: JobSpec, sealed_env: str = "") -> None:
        """Record a job. Its `env` is recorded by its names alone: a spec with an env comes
        with the env sealed for this job (infra/job_env.py), or is refused."""
        if spec.env and not sealed_env:
            raise ValueError(f"job {job_id}: an env is recorded sealed, never in the clear;"
                             " seal it (infra/job_env.py) and pass sealed_env")
        if self._get_or_none(Job.create_id(job_id=job_id)) is not None:
            return
        AMOUNT.check("max_cost_micro", spec.max_cost_micro)
        job = Job(
            job_id=job_id,
            client_id=client_id,
            spec=env_names_only(spec.model_dump(mode="json")),
            max_cost_micro=spec.max_cost_micro,
            sealed_env=sealed_env if spec.env else "",
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

    def run_failed(self, job_id: str, attempt_no: int, provider_id: str, reason: str) -> None:
        """The provider failed its step with an error of its own: free its GPUs; the run goes
        elsewhere (no outcome yet: JobWorkflow records it once another provider got through)."""

        def attempt() -> tuple[None, list[Aggregate]]:
            job = self.job(job_id)
            provider = self.provider(provider_id)
            job.record_run_failed(attempt_no, provider_id, reason)
            provider.release(job_id)
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

    def record_output_refused(self, job_id: str, attempt_no: int, path: str, provider_id: str,
                              size: int, declared: str, quota_bytes: int, usage: int,
                              reason: str) -> None:
        """Storage refused a run's upload of an output for the client's quota (Job
        `OutputRefused`): recorded once, a repeat saves nothing."""

        def attempt() -> tuple[None, list[Aggregate]]:
            job = self.job(job_id)
            job.record_output_refused(attempt_no, path, provider_id, size, declared,
                                      quota_bytes, usage, reason)
            return None, [job] if job.pending_events else []

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
        checks it added on its own. What the client is charged for a job whose verdict was
        a verified success is noted on its account as verified work (domain/ledger.py),
        in the same transaction as the settlement, so once.
        """

        def attempt() -> tuple[SettlementFigures, list[Aggregate]]:
            job = self.job(job_id)
            if "FundsEscrowed" not in job.recorded:
                raise InvalidTransition("", f"job {job_id} holds no escrow to settle")
            held = job.max_cost_micro
            run_cap = JobSpec.recorded(job.spec).max_run_cost_micro
            moves: list[tuple[str, str, str, int, str]] = []  # from, to, id, amount, memo
            charged = fee = paid = 0
            for p in payments:
                cost = min(cost_of_gpu_time(p.gpu_ms, p.price_micro), run_cap)
                if p.payer == "network":
                    moves.append((CHECKS, provider_account(p.provider_id),
                                  f"check:{job_id}:{p.provider_id}", cost, "verification run"))
                    continue
                cost = min(cost, held - charged)
                if p.withheld:
                    charged, fee = charged + cost, fee + cost
                    moves.append((escrow_account(job_id), FEES,
                                  f"withheld:{job_id}:{p.provider_id}", cost,
                                  "GPU time of an unverified run, not paid"))
                    continue
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
                        "", f"job {job_id} is already settled ({job.settlement}); "
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
            if job.verified_success and charged:
                name = client_account(job.client_id)
                if name not in accounts:
                    accounts[name] = self.account(name)
                accounts[name].note_verified_work(job_id, charged)
            job.record_settlement(charged, paid, fee, held - charged)
            return figures, [job, *accounts.values()]

        return self._save_retrying(attempt)

    def client_standing(self, job: Job) -> tuple[Account | None, int, int]:
        """The job's client's ledger account (None before it has one), what the client had
        paid for verified work on its other jobs (domain/ledger.py: `JobSettled.charged_micro`
        of each job whose verdict was a verified success; this job's own charge left out;
        deposits and grants are not in it; at most MAX_SPENT_MICRO), and how many `outvoted`
        outcomes its jobs had caused so far, against any provider (`Account.outvotes_caused`,
        at most MAX_OUTVOTES): read from one load of the account."""
        account = self._get_or_none(Account.create_id(name=client_account(job.client_id)))
        if account is None:
            return None, 0, 0
        spent = int(account.verified_spent_micro) - job.verified_charge_micro
        return (account, max(0, min(spent, MAX_SPENT_MICRO)),
                min(int(account.outvotes_caused), MAX_OUTVOTES))

    def record_reputation(self, job_id: str, provider_id: str, outcome: str) -> None:
        """`job_id` is the outcome's key: the job's id, or `<job id>#<attempt>` for one of
        several runs; the job's own stream shows it too (ReputationRecorded). The outcome
        names the job's client, as the job has it (never as a provider says), what that
        client had paid for verified work before and how many `outvoted` outcomes its jobs
        had caused before (`client_standing`), both from its ledger account, never as
        anyone says: an `outvoted` counts in the score only once
        several clients that each paid enough outvoted the provider, and each `outvoted` a
        client caused raises what its next one needs (domain/reputation.py). An `outvoted`
        is counted on the client's account in the same transaction as the outcome, and only
        where the provider records it for the first time: a retry counts nothing again."""

        def attempt() -> tuple[None, list[Aggregate]]:
            provider = self.provider(provider_id)
            job = self._get_or_none(Job.create_id(job_id=job_id.split("#", 1)[0]))
            if job is None:
                provider.record_outcome(job_id, outcome)
                return None, [provider]
            account, spent, outvotes = self.client_standing(job)
            recorded = provider.record_outcome(
                job_id, outcome, client_id=job.client_id, client_spent_micro=spent,
                client_outvotes_before=outvotes)
            job.note_reputation(provider_id, job_id, outcome)
            if not (recorded and outcome == OUTVOTED and job.client_id):
                return None, [provider, job]
            client = account or self.account(client_account(job.client_id))
            client.note_outvoted(job_id, provider_id)
            return None, [provider, job, client]

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

    def close_job(
        self,
        job_id: str,
        payments: list[Payment] | None,
        fee_bps: int,
        outcomes: list[tuple[str, str, str]],
        release_provider_ids: list[str],
        succeeded: bool,
        reason: str,
        cancelled: bool = False,
    ) -> SettlementFigures | None:
        """A job's ending in one transaction: settle it (`settle_many`; none when `payments`
        is None), record each outcome (key, provider, outcome: `record_reputation`), release
        its GPUs on each provider (`release_gpus`), finish it (`finish_job`). The same events
        as those commands one after the other, in that order; each sees what the ones before
        it changed. Closed again, it changes nothing and returns the same settlement."""

        def work() -> SettlementFigures | None:
            figures = None
            if payments is not None:
                figures = self.settle_many(job_id, payments, fee_bps)
            for key, provider_id, outcome in outcomes:
                self.record_reputation(key, provider_id, outcome)
            for provider_id in release_provider_ids:
                self.release_gpus(job_id, provider_id)
            self.finish_job(job_id, succeeded, reason, cancelled)
            return figures

        return self.in_one_transaction(work)

    def end_abandoned(self, job_id: str, reason: str, fee_bps: int) -> bool:
        """End a job whose workflow stopped without ending it (an operator terminated it):
        no result was verified, so the escrow goes back whole (a settlement already made
        stands), its GPUs are released, and it fails with `reason`. False if it had ended."""
        def work() -> bool:  # the refund and the ending, one transaction
            job = self.job(job_id)  # loaded anew by each try (another may have ended it)
            if job.ended:
                return False
            if "FundsEscrowed" in job.recorded and job.settlement is None:
                self.settle_many(job_id, [], fee_bps)
            self.finish_job(job_id, False, reason)
            return True

        return self.in_one_transaction(work)
