"""Control-plane activities: admit, allocate, transfers, record, verify, settle, reputation.

Synchronous (the eventsourcing application is synchronous); the worker runs
them in a thread pool. Every one is safe to run twice: the application's
commands are idempotent by business key; a step a Temporal reset runs again for a job that
ended, or for an attempt that already ran, is refused (activities/refusals.py).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory, CancelledError

from activities import checkpoints
from activities.grants import OUTPUT_GRANT_BYTES, Grants
from activities.guard import Callers, ours
from activities.refusals import ended_job, live, refuse, spent
from activities.scheduler import Scheduler
from activities.verify import judge, output_key
from domain.application import Network, Payment
from domain.errors import DomainError
from domain.job import Job
from domain.verification import check_rate, decide_check
from infra.assignments import AssignmentBoard
from infra.job_env import open_env
from infra.row_cipher import RowCipher, RowSealError
from infra.settings import Settings
from infra.storage import ObjectStore
from protocol.spec import JobSpec
from readmodel.schema import ViewDB
from readmodel.telemetry import online_provider_ids
from workflows import contracts as c

log = logging.getLogger(__name__)


MAX_LOG_TAIL_BYTES = 16 * 1024  # of a job's log kept in its ExecutionFinished event


def log_tail(text: str, limit: int = MAX_LOG_TAIL_BYTES) -> str:
    """At most the last `limit` bytes (UTF-8) of a log tail a provider reported: a provider
    is not trusted to send the 4 KiB it is meant to, and the event store keeps it for good."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[-limit:].decode("utf-8", "replace").lstrip("\ufffd")


def _step_data(step: c.JobStep) -> dict[str, object]:
    """What a step's domain event carries, by the kind of step."""
    data: dict[str, object] = {"provider_id": step.provider_id}
    if step.step == "inputs_staged":
        data |= {"files": step.files, "bytes": step.bytes}
    elif step.step == "execution_finished":
        data |= {
            "exit_code": step.exit_code,
            "timed_out": step.timed_out,
            "gpu_ms": step.gpu_ms,
            "log_tail": log_tail(step.log_tail),
        }
    elif step.step == "outputs_uploaded":
        data |= {"manifest": [m.record() for m in step.manifest], "missing": step.missing}
    return data


# How long one try of the allocate activity waits in line before Temporal retries it: short,
# so that cancelling a waiting job takes effect within seconds.
ALLOCATE_WAIT_S = 5.0
# A waiting job holds a worker slot (and a thread) in allocate_gpus for most of its wait; the
# other control activities are short and touch the stores. The worker has a slot for each of
# up to WAITING_SLOTS waiting jobs on top of BUSY_SLOTS for the rest, which are bounded
# to BUSY_SLOTS at once: waiting jobs never starve the steps of running ones (with 32 slots
# for all, 120 waiting jobs made every step of a running job wait ~15 s for a slot).
BUSY_SLOTS = 32
WAITING_SLOTS = 1024
CONTROL_SLOTS = BUSY_SLOTS + WAITING_SLOTS

F = TypeVar("F", bound=Callable[..., Any])


def _busy(fn: F) -> F:
    """Run the activity in one of the BUSY_SLOTS threads (a store-bound step, not a wait)."""

    @functools.wraps(fn)
    def bounded(self: ControlActivities, *args: Any) -> Any:
        with self.busy:
            return fn(self, *args)

    return cast(F, bounded)


# Every control step runs with no_thread_cancel_exception: a cancelled step (its
# workflow's timeout or a cancel) finishes on its own; the cancel only stops anyone waiting
# for it. Temporal would otherwise raise CancelledError inside the thread at any bytecode,
# also between a lock's acquire and its try/finally in eventsourcing's connection pool:
# the lock was never released and every later store step waited forever (seen in the
# 500-job test: a control worker idle with 500 jobs unfinished). Steps that wait (the
# scheduler's allocate) look at activity.is_cancelled() themselves.


def _payments(req: c.SettleRequest) -> list[Payment]:
    """Who a settlement pays: the request's lines, or its one provider (`Jobs.settle`)."""
    if req.payments is not None:
        return [Payment(p.provider_id, p.gpu_ms, p.price_per_gpu_hour_micro, p.payer, p.withheld)
                for p in req.payments]
    if not req.pay_provider:
        return []
    return [Payment(req.provider_id, req.gpu_ms, req.price_per_gpu_hour_micro)]


class ControlActivities:
    def __init__(self, network: Network, views: ViewDB, store: ObjectStore, settings: Settings):
        self.network, self.views, self.store, self.settings = network, views, store, settings
        self.callers = Callers(network)
        self.scheduler = Scheduler(network, self.online_provider_ids)
        self.busy = threading.BoundedSemaphore(BUSY_SLOTS)
        self._cipher: RowCipher | None = None
        self._board: AssignmentBoard | None = None

    @property
    def cipher(self) -> RowCipher:
        if self._cipher is None:
            self._cipher = RowCipher(self.settings.payload_keys)
        return self._cipher

    @property
    def board(self) -> AssignmentBoard:
        if self._board is None:
            self._board = AssignmentBoard(self.views, self.cipher)
        return self._board

    def job_env(self, job: Job) -> dict[str, str]:
        """The job's env, opened from its JobSubmitted event (infra/job_env.py): only a
        run's plan has it, and it goes on encrypted (Temporal's payloads, the sealed row)."""
        try:
            return open_env(self.cipher, job.job_id, job.spec.get("env") or {}, job.sealed_env)
        except RowSealError as err:
            raise refuse(DomainError("env", str(err))) from err

    def online_provider_ids(self) -> set[str]:
        return online_provider_ids(self.views, self.settings)

    @activity.defn(name=c.ADMIT_JOB, no_thread_cancel_exception=True)
    @ours
    @_busy
    def admit_job(self, req: c.JobInput) -> c.AdmitResult:
        try:
            admission = self.network.admit_job(req.job_id)
        except DomainError as err:
            raise refuse(err) from err
        job = self.network.job(req.job_id)
        verification = JobSpec.recorded(job.spec).verification
        return c.AdmitResult(
            admission.admitted, admission.max_cost_micro, admission.reason,
            verification.replicas, list(verification.verifier or []),
            self.settings.check_wait_s, self.settings.replica_wait_s,
            ended_job(job) if admission.admitted and job.ended else None,
        )

    @activity.defn(name=c.ALLOCATE_GPUS, no_thread_cancel_exception=True)
    @ours
    def allocate_gpus(self, req: c.AllocateRequest) -> c.Allocation:
        """Wait in the job's queue for the scheduler to place this run (a few seconds a try)."""
        in_activity = activity.in_activity()  # also called directly, by tests and tools
        job = self.network.job(req.job_id)
        live(job, "allocation")
        # This job's other runs (not lost) put their owners' providers out: a run whose GPUs
        # went back when it finished still counts, or a replica, tie-break or verifier could
        # land on another provider of the same account and agree with itself.
        ran = job.ran_on(req.attempt)
        excluded = set(req.excluded_provider_ids) | self.network.same_owner(ran)
        try:
            decision = self.scheduler.request(
                req.job_id, req.attempt, excluded, ALLOCATE_WAIT_S,
                cancelled=activity.is_cancelled if in_activity else lambda: False,
                heartbeat=activity.heartbeat if in_activity else lambda _: None,
                avoided=set(req.avoided_provider_ids) - excluded,
            )
        except DomainError as err:
            raise refuse(err) from err
        if in_activity and activity.is_cancelled():
            raise CancelledError("the job was cancelled while it waited for GPUs")
        if isinstance(decision, str):
            # Retryable on purpose: the job waits in the queue until GPUs fit. Benign: the
            # worker logs it at DEBUG, not a traceback per waiting job every few seconds.
            raise ApplicationError(decision, type="NoCapacity",
                                   category=ApplicationErrorCategory.BENIGN)
        assert decision.provider_id is not None
        return c.Allocation(
            req.job_id,
            req.attempt,
            decision.provider_id,
            decision.gpu_indexes,
            decision.price_per_gpu_hour_micro,
        )

    @activity.defn(name=c.PREPARE_TRANSFERS, no_thread_cancel_exception=True)
    @ours
    @_busy
    def prepare_transfers(self, req: c.AllocateRequest) -> c.TransferPlan:
        """The run's grants (infra/signing.py): each for one key, bound to this job, attempt
        and provider, for minutes (the agent renews them while the run is live)."""
        job = self.network.job(req.job_id)
        live(job, "a run")
        spent(self.board, job, req.attempt, "a run")
        spec = JobSpec.recorded(job.spec)
        provider_id = job.allocations.get(req.attempt)
        if provider_id is None:
            raise refuse(DomainError("", f"attempt {req.attempt} of job {req.job_id} is not "
                                      "allocated"))
        grants = Grants(self.settings, job.client_id, req.job_id, req.attempt, provider_id)
        env = self.job_env(job)
        inputs = []
        for ref in spec.inputs:
            if ref.digest is None or ref.size is None:
                raise refuse(DomainError("", f"input {ref.key} was not pinned at submission"))
            inputs.append(c.InputTransfer(ref.target, grants.get(ref.key, ref.digest, ref.size),
                                          ref.digest, ref.size))
        if req.purpose == "verify":  # the verifier reads the accepted outputs, writes nothing
            if not spec.verification.verifier:
                raise refuse(DomainError("", f"job {req.job_id} has no verifier"))
            inputs = [
                c.InputTransfer(m["path"], grants.get(m["key"], m["digest"], m["size"]),
                                m["digest"], m["size"])
                for m in job.manifests.get(req.source_attempt, [])
            ]
            return c.TransferPlan(
                req.job_id, req.attempt, inputs, [], spec.verification.verifier, env,
                spec.timeout_s, spec.image, False,
            )
        outputs = []
        for path in spec.outputs:
            key = output_key(req.job_id, path, req.attempt)
            # At most what one object may hold: the agent refuses a larger output from its
            # size alone, before it reads it (worker_gpu/outputs.py).
            most = min(OUTPUT_GRANT_BYTES, self.settings.max_object_bytes)
            outputs.append(c.OutputTransfer(path, key, grants.put(key, most, once=True)))
        checkpoint = None
        if spec.verification.replicas == 1 and not job.manifests:
            # The job's one line of runs (not a check or a tie-break that follows it): it
            # keeps a checkpoint, and a run after a lost provider starts from the last one.
            checkpoint = checkpoints.plan(
                self.store, self.settings, grants, job.allocations, req,
                {i.name for i in inputs}, self.network.same_owner({provider_id}),
            )
            inputs += [
                c.InputTransfer(f"{checkpoints.CHECKPOINT_DIR}/{e.path}",
                                grants.get(e.key, e.digest, e.size), e.digest, e.size)
                for e in checkpoint.resumed
            ]
        return c.TransferPlan(
            req.job_id, req.attempt, inputs, outputs, spec.command, env, spec.timeout_s,
            spec.image, spec.network, checkpoint,
        )

    @activity.defn(name=c.RECORD_JOB_STEP, no_thread_cancel_exception=True)
    @ours
    @_busy
    def record_job_step(self, step: c.JobStep) -> None:
        live(self.network.job(step.job_id), step.step)
        try:
            self.network.record_step(step.job_id, step.step, step.attempt, _step_data(step))
        except DomainError as err:
            raise refuse(err) from err

    @activity.defn(name=c.RECORD_JOB_STEPS, no_thread_cancel_exception=True)
    @ours
    @_busy
    def record_job_steps(self, steps: c.JobSteps) -> None:
        """Facts about one job, in order, in one transaction."""
        if not steps.steps:
            return
        job_id = steps.steps[0].job_id
        if any(s.job_id != job_id for s in steps.steps):
            raise ApplicationError("steps: all must be about one job", non_retryable=True)
        job = self.network.job(job_id)
        live(job, steps.steps[-1].step)
        for s in steps.steps:
            if s.step == "execution_started":  # what follows runs the job's command
                spent(self.board, job, s.attempt, s.step)
        try:
            self.network.record_steps(
                job_id, [(s.step, s.attempt, _step_data(s)) for s in steps.steps]
            )
        except DomainError as err:
            raise refuse(err) from err

    @activity.defn(name=c.MARK_PROVIDER_LOST, no_thread_cancel_exception=True)
    @ours
    @_busy
    def mark_provider_lost(self, req: c.ProviderLost) -> None:
        live(self.network.job(req.job_id), "a provider's loss")
        self.network.provider_lost(req.job_id, req.attempt, req.provider_id, req.reason)

    @activity.defn(name=c.RECORD_RUN_FAILED, no_thread_cancel_exception=True)
    @ours
    @_busy
    def record_run_failed(self, req: c.RunFailed) -> None:
        live(self.network.job(req.job_id), "a provider's failure")
        try:
            self.network.run_failed(req.job_id, req.attempt, req.provider_id, req.reason)
        except DomainError as err:
            raise refuse(err) from err
        self.scheduler.wake()

    @activity.defn(name=c.VERIFY_JOB, no_thread_cancel_exception=True)
    @ours
    @_busy
    def verify_job(self, req: c.VerifyRequest) -> c.Verdict:
        """Check each run's report against storage, the runs against each other, the outcome."""
        job = self.network.job(req.job_id)
        live(job, "verification")
        spec = JobSpec.recorded(job.spec)
        primary = c.ReplicaReport(
            req.attempt, req.provider_id, 0, req.exit_code, req.timed_out, 0, req.manifest,
            req.missing, refused=req.refused,
        )
        reports = [primary, *req.others]
        # What storage refused for the client's quota, as the storage API recorded it.
        refused = {r.attempt: job.refused_outputs(r.attempt) for r in reports}
        verdict, winner = judge(
            self.store, job.client_id, req.job_id, spec, reports, may_add_run=len(reports) < 3,
            refused=refused,
        )
        if verdict.decided:
            self.network.record_verdict(
                req.job_id, verdict.accepted, verdict.succeeded, verdict.reason, winner
            )
        return verdict

    @activity.defn(name=c.PLAN_CHECK, no_thread_cancel_exception=True)
    @ours
    @_busy
    def plan_check(self, req: c.CheckRequest) -> c.CheckDecision:
        """The network's own check: replicate this run at a rate that falls with trust."""
        if not self.settings.adaptive_checks:
            return c.CheckDecision(False, "adaptive checks are off on this network")
        job = self.network.job(req.job_id)
        live(job, "a check")
        if not JobSpec.recorded(job.spec).verification.comparable:
            return c.CheckDecision(False, "the job is not declared reproducible: its provider "
                                          "is checked with known-answer canaries instead")
        outcomes = self.network.provider(req.provider_id).outcomes
        rate = check_rate(outcomes)
        run = decide_check(outcomes, req.draw)
        return c.CheckDecision(run, f"check rate {rate:.2f} for {req.provider_id}")

    @activity.defn(name=c.RECORD_UNPLACED, no_thread_cancel_exception=True)
    @ours
    @_busy
    def record_unplaced(self, req: c.UnplacedRun) -> None:
        """The workflow gave up waiting for this run's GPUs: say so on the job, free any
        GPUs a placement gave it meanwhile, and take it out of this scheduler's line."""
        self.scheduler.withdraw(req.job_id, req.attempt)
        try:
            self.network.record_unplaced(req.job_id, req.attempt, req.purpose, req.reason)
        except DomainError as err:
            raise refuse(err) from err
        self.scheduler.wake()

    @activity.defn(name=c.RELEASE_RUN, no_thread_cancel_exception=True)
    @ours
    @_busy
    def release_run(self, req: c.ReleaseRunRequest) -> None:
        """A run finished: its GPUs go back now, while the job verifies and settles."""
        self.network.release_gpus(req.job_id, req.provider_id)
        self.scheduler.wake()

    @activity.defn(name=c.SETTLE_JOB, no_thread_cancel_exception=True)
    @ours
    @_busy
    def settle_job(self, req: c.SettleRequest) -> c.Settlement:
        try:
            s = self.network.settle_many(
                req.job_id, _payments(req), self.settings.protocol_fee_bps)
        except DomainError as err:
            raise refuse(err) from err
        return c.Settlement(s.charged_micro, s.provider_paid_micro, s.fee_micro, s.refunded_micro)

    @activity.defn(name=c.RECORD_REPUTATION, no_thread_cancel_exception=True)
    @ours
    @_busy
    def record_reputation(self, req: c.ReputationRequest) -> None:
        try:
            self.network.record_reputation(req.job_id, req.provider_id, req.outcome)
        except DomainError as err:
            raise refuse(err) from err

    @activity.defn(name=c.RELEASE_GPUS, no_thread_cancel_exception=True)
    @ours
    @_busy
    def release_gpus(self, req: c.ReleaseRequest) -> None:
        self.network.release_gpus(req.job_id, req.provider_id)
        self.scheduler.wake()

    @activity.defn(name=c.FINISH_JOB, no_thread_cancel_exception=True)
    @ours
    @_busy
    def finish_job(self, req: c.FinishRequest) -> None:
        self.network.finish_job(req.job_id, req.succeeded, req.reason, req.cancelled)
        self.scheduler.wake()
        if req.succeeded and not req.cancelled:
            checkpoints.drop(self.store, self.network.job(req.job_id).client_id, req.job_id)

    @activity.defn(name=c.CLOSE_JOB, no_thread_cancel_exception=True)
    @ours
    @_busy
    def close_job(self, req: c.CloseRequest) -> c.Settlement:
        """settle_job, record_reputation, release_gpus and finish_job in one transaction
        (Network.close_job); a domain error in any refuses the whole, as each refused its own."""
        job_id, finish = req.finish.job_id, req.finish  # every part of it (activities/guard.py)
        try:
            s = self.network.close_job(
                job_id, None if req.settle is None else _payments(req.settle),
                self.settings.protocol_fee_bps,
                [(o.job_id, o.provider_id, o.outcome) for o in req.outcomes],
                req.release_provider_ids, finish.succeeded, finish.reason, finish.cancelled,
            )
        except DomainError as err:
            raise refuse(err) from err
        self.scheduler.wake()
        job = self.network.job(job_id)
        if finish.succeeded and not finish.cancelled:
            checkpoints.drop(self.store, job.client_id, job_id)
        ending = ended_job(job)
        if s is None:
            return c.Settlement(0, 0, 0, 0, ending)
        return c.Settlement(s.charged_micro, s.provider_paid_micro, s.fee_micro,
                            s.refunded_micro, ending)

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.admit_job, self.allocate_gpus, self.prepare_transfers, self.record_job_step,
            self.record_job_steps, self.mark_provider_lost, self.record_run_failed,
            self.verify_job, self.settle_job, self.record_reputation,
            self.release_gpus, self.finish_job, self.plan_check, self.record_unplaced,
            self.release_run, self.close_job,
        ]
