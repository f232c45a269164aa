"""Control-plane activities: admit, allocate, transfers, record, verify, settle, reputation.

Synchronous (the eventsourcing application is synchronous); the worker runs
them in a thread pool. Every one is safe to run twice: the application's
commands are idempotent by business key.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar, cast

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory, CancelledError

from activities.scheduler import Scheduler
from activities.verify import judge, output_key
from domain.application import Network, Payment
from domain.errors import DomainError
from domain.spec import JobSpec, check_relative_path
from domain.verification import check_rate, decide_check
from infra.db import ViewDB, online_provider_ids
from infra.settings import Settings
from infra.signing import presigned_url
from infra.storage import ObjectStore, StorageError, delete_each
from workflows import contracts as c

log = logging.getLogger(__name__)


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
            "log_tail": step.log_tail,
        }
    elif step.step == "outputs_uploaded":
        data |= {"manifest": [asdict(m) for m in step.manifest], "missing": step.missing}
    return data


def _refuse(err: Exception) -> ApplicationError:
    return ApplicationError(str(err), type=type(err).__name__, non_retryable=True)


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


def _ours(fn: F) -> F:
    """Defence in depth for steps that only JobWorkflow takes: run as a local activity
    inside the workflow (patch local-control-steps), or, for histories from before it,
    scheduled by the job's own workflow (`job-<job_id>`, type JobWorkflow), which Temporal
    runs once per id. A workflow started from outside, were Temporal ever reachable,
    cannot settle or rate a job it is not. Called directly (tests, tools): allowed."""

    @functools.wraps(fn)
    def guarded(self: ControlActivities, req: Any) -> Any:
        if activity.in_activity():
            info = activity.info()
            job_id = _job_of(req).split("#", 1)[0]
            if not info.is_local and (info.workflow_type != "JobWorkflow"
                                      or info.workflow_id != c.job_workflow_id(job_id)):
                raise ApplicationError(
                    f"{info.activity_type} runs only inside the network's own job workflows",
                    type="NotOurWorkflow", non_retryable=True,
                )
        return fn(self, req)

    return cast(F, guarded)


def _job_of(req: Any) -> str:
    if isinstance(req, c.JobSteps):
        return req.steps[0].job_id if req.steps else ""
    return str(getattr(req, "job_id", ""))


# Every control step runs with no_thread_cancel_exception: a cancelled step (its
# workflow's timeout or a cancel) finishes on its own; the cancel only stops anyone waiting
# for it. Temporal would otherwise raise CancelledError inside the thread at any bytecode,
# also between a lock's acquire and its try/finally in eventsourcing's connection pool:
# the lock was never released and every later store step waited forever (seen in the
# 500-job test: a control worker idle with 500 jobs unfinished). Steps that wait (the
# scheduler's allocate) look at activity.is_cancelled() themselves.


class ControlActivities:
    def __init__(self, network: Network, views: ViewDB, store: ObjectStore, settings: Settings):
        self.network, self.views, self.store, self.settings = network, views, store, settings
        self.scheduler = Scheduler(network, self.online_provider_ids)
        self.busy = threading.BoundedSemaphore(BUSY_SLOTS)

    def online_provider_ids(self) -> set[str]:
        return online_provider_ids(self.views, self.settings)

    @activity.defn(name=c.ADMIT_JOB, no_thread_cancel_exception=True)
    @_ours
    @_busy
    def admit_job(self, req: c.JobInput) -> c.AdmitResult:
        try:
            admission = self.network.admit_job(req.job_id)
        except DomainError as err:
            raise _refuse(err) from err
        verification = JobSpec.model_validate(self.network.job(req.job_id).spec).verification
        return c.AdmitResult(
            admission.admitted, admission.max_cost_micro, admission.reason,
            verification.replicas, list(verification.verifier or []),
        )

    @activity.defn(name=c.ALLOCATE_GPUS, no_thread_cancel_exception=True)
    def allocate_gpus(self, req: c.AllocateRequest) -> c.Allocation:
        """Wait in the job's queue for the scheduler to place this run (a few seconds a try)."""
        live = activity.in_activity()  # also called directly, by tests and tools
        try:
            decision = self.scheduler.request(
                req.job_id, req.attempt, set(req.excluded_provider_ids), ALLOCATE_WAIT_S,
                cancelled=activity.is_cancelled if live else lambda: False,
                heartbeat=activity.heartbeat if live else lambda _: None,
            )
        except DomainError as err:
            raise _refuse(err) from err
        if live and activity.is_cancelled():
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
    @_busy
    def prepare_transfers(self, req: c.AllocateRequest) -> c.TransferPlan:
        job = self.network.job(req.job_id)
        spec = JobSpec.model_validate(job.spec)
        expires = int(time.time()) + spec.timeout_s + 3600
        secret, base = self.settings.signing_secret, self.settings.api_url
        inputs = []
        for ref in spec.inputs:
            if ref.sha256 is None or ref.size is None:
                raise _refuse(DomainError(f"input {ref.key} was not pinned at submission"))
            url = presigned_url(secret, base, "GET", job.client_id, ref.key, expires)
            inputs.append(c.InputTransfer(ref.target, url, ref.sha256, ref.size))
        if req.purpose == "verify":  # the verifier reads the accepted outputs, writes nothing
            if not spec.verification.verifier:
                raise _refuse(DomainError(f"job {req.job_id} has no verifier"))
            inputs = [
                c.InputTransfer(
                    m["path"], presigned_url(secret, base, "GET", job.client_id, m["key"], expires),
                    m["sha256"], m["size"],
                )
                for m in job.manifests.get(req.source_attempt, [])
            ]
            return c.TransferPlan(
                req.job_id, req.attempt, inputs, [], spec.verification.verifier, spec.env,
                spec.timeout_s, spec.image, False,
            )
        outputs = []
        for path in spec.outputs:
            key = output_key(req.job_id, path, req.attempt)
            url = presigned_url(secret, base, "PUT", job.client_id, key, expires)
            outputs.append(c.OutputTransfer(path, key, url))
        checkpoint = None
        if spec.verification.replicas == 1 and not job.manifests:
            # The job's one line of runs (not a check or a tie-break that follows it): it
            # keeps a checkpoint, and a run after a lost provider starts from the last one.
            checkpoint = _checkpoint_plan(
                self.store, self.settings, job.client_id, req, expires, {i.name for i in inputs}
            )
            inputs += [
                c.InputTransfer(
                    f"{CHECKPOINT_DIR}/{e.path}",
                    presigned_url(secret, base, "GET", job.client_id, e.key, expires),
                    e.sha256, e.size,
                )
                for e in checkpoint.resumed
            ]
        return c.TransferPlan(
            req.job_id, req.attempt, inputs, outputs, spec.command, spec.env, spec.timeout_s,
            spec.image, spec.network, checkpoint,
        )

    @activity.defn(name=c.RECORD_JOB_STEP, no_thread_cancel_exception=True)
    @_busy
    def record_job_step(self, step: c.JobStep) -> None:
        try:
            self.network.record_step(step.job_id, step.step, step.attempt, _step_data(step))
        except DomainError as err:
            raise _refuse(err) from err

    @activity.defn(name=c.RECORD_JOB_STEPS, no_thread_cancel_exception=True)
    @_ours
    @_busy
    def record_job_steps(self, steps: c.JobSteps) -> None:
        """Facts about one job, in order, in one transaction."""
        if not steps.steps:
            return
        job_id = steps.steps[0].job_id
        if any(s.job_id != job_id for s in steps.steps):
            raise ApplicationError("steps: all must be about one job", non_retryable=True)
        try:
            self.network.record_steps(
                job_id, [(s.step, s.attempt, _step_data(s)) for s in steps.steps]
            )
        except DomainError as err:
            raise _refuse(err) from err

    @activity.defn(name=c.MARK_PROVIDER_LOST, no_thread_cancel_exception=True)
    @_busy
    def mark_provider_lost(self, req: c.ProviderLost) -> None:
        self.network.provider_lost(req.job_id, req.attempt, req.provider_id, req.reason)

    @activity.defn(name=c.VERIFY_JOB, no_thread_cancel_exception=True)
    @_ours
    @_busy
    def verify_job(self, req: c.VerifyRequest) -> c.Verdict:
        """Check each run's report against storage, the runs against each other, the outcome."""
        job = self.network.job(req.job_id)
        spec = JobSpec.model_validate(job.spec)
        primary = c.ReplicaReport(
            req.attempt, req.provider_id, 0, req.exit_code, req.timed_out, 0, req.manifest,
            req.missing,
        )
        reports = [primary, *req.others]
        verdict, winner = judge(
            self.store, job.client_id, req.job_id, spec, reports, may_add_run=len(reports) < 3
        )
        if verdict.decided:
            self.network.record_verdict(
                req.job_id, verdict.accepted, verdict.succeeded, verdict.reason, winner
            )
        return verdict

    @activity.defn(name=c.PLAN_CHECK, no_thread_cancel_exception=True)
    @_ours
    @_busy
    def plan_check(self, req: c.CheckRequest) -> c.CheckDecision:
        """The network's own check: replicate this run at a rate that falls with trust."""
        if not self.settings.adaptive_checks:
            return c.CheckDecision(False, "adaptive checks are off on this network")
        outcomes = self.network.provider(req.provider_id).outcomes
        rate = check_rate(outcomes)
        run = decide_check(outcomes, req.draw)
        return c.CheckDecision(run, f"check rate {rate:.2f} for {req.provider_id}")

    @activity.defn(name=c.SETTLE_JOB, no_thread_cancel_exception=True)
    @_ours
    @_busy
    def settle_job(self, req: c.SettleRequest) -> c.Settlement:
        try:
            if req.payments is not None:
                payments = [
                    Payment(p.provider_id, p.gpu_ms, p.price_per_gpu_hour_micro, p.payer)
                    for p in req.payments
                ]
                s = self.network.settle_many(req.job_id, payments, self.settings.protocol_fee_bps)
            else:
                s = self.network.settle(
                    req.job_id,
                    req.provider_id,
                    req.gpu_ms,
                    req.price_per_gpu_hour_micro,
                    req.pay_provider,
                    self.settings.protocol_fee_bps,
                )
        except DomainError as err:
            raise _refuse(err) from err
        return c.Settlement(s.charged_micro, s.provider_paid_micro, s.fee_micro, s.refunded_micro)

    @activity.defn(name=c.RECORD_REPUTATION, no_thread_cancel_exception=True)
    @_ours
    @_busy
    def record_reputation(self, req: c.ReputationRequest) -> None:
        try:
            self.network.record_reputation(req.job_id, req.provider_id, req.outcome)
        except DomainError as err:
            raise _refuse(err) from err

    @activity.defn(name=c.RELEASE_GPUS, no_thread_cancel_exception=True)
    @_busy
    def release_gpus(self, req: c.ReleaseRequest) -> None:
        self.network.release_gpus(req.job_id, req.provider_id)
        self.scheduler.wake()

    @activity.defn(name=c.FINISH_JOB, no_thread_cancel_exception=True)
    @_ours
    @_busy
    def finish_job(self, req: c.FinishRequest) -> None:
        self.network.finish_job(req.job_id, req.succeeded, req.reason, req.cancelled)
        self.scheduler.wake()
        if req.succeeded and not req.cancelled:
            self._drop_checkpoint(req.job_id)

    def _drop_checkpoint(self, job_id: str) -> None:
        """A succeeded job's checkpoint is of no more use: its files leave the client's
        storage (and quota). A failed or cancelled job keeps its last one to start from.
        Best effort: the job has finished either way, and a retry finds less to delete."""
        client_id = self.network.job(job_id).client_id
        try:
            # The manifest first: no half-deleted checkpoint is ever named as complete.
            delete_each(self.store, client_id, [checkpoint_manifest_key(job_id)] + [
                o.key for o in self.store.list(client_id, f"jobs/{job_id}/{CHECKPOINT_DIR}/")
            ])
        except (StorageError, OSError) as err:
            log.warning("job %s: its checkpoint stays in storage: %s", job_id, err)

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.admit_job, self.allocate_gpus, self.prepare_transfers, self.record_job_step,
            self.record_job_steps,
            self.mark_provider_lost, self.verify_job, self.settle_job, self.record_reputation,
            self.release_gpus, self.finish_job, self.plan_check,
        ]


# Checkpoints (worker_gpu/checkpoint.py has the provider's side and the convention).

CHECKPOINT_DIR = "checkpoint"
MANIFEST_LIMIT = 1 << 20  # bytes of checkpoint.json worth reading


def checkpoint_manifest_key(job_id: str) -> str:
    return f"jobs/{job_id}/checkpoint.json"


def checkpoint_slot_key(job_id: str, attempt: int, slot: int) -> str:
    """Each run uploads into slots of its own, so no run overwrites another's checkpoint."""
    return f"jobs/{job_id}/checkpoint/{attempt}/{slot}"


def _checkpoint_plan(
    store: ObjectStore, settings: Settings, client_id: str, req: c.AllocateRequest,
    expires: int, taken: set[str],
) -> c.CheckpointPlan:
    """Presigned PUTs for this run's checkpoint and, after a lost run, the last one to resume."""
    secret, base = settings.signing_secret, settings.api_url
    manifest_key = checkpoint_manifest_key(req.job_id)
    slots = []
    for n in range(2 * settings.checkpoint_max_files):
        key = checkpoint_slot_key(req.job_id, req.attempt, n)
        slots.append(c.OutputTransfer(str(n), key,
                                      presigned_url(secret, base, "PUT", client_id, key, expires)))
    resumed: list[c.ManifestEntry] = []
    source = 0
    if req.attempt > 1:  # the first attempt has no checkpoint to start from
        try:
            resumed, source = _last_checkpoint(store, settings, client_id, req.job_id)
        except (StorageError, ValueError, KeyError, TypeError, AttributeError) as err:
            log.warning("job %s: not resuming from its checkpoint: %s", req.job_id, err)
        # A declared input keeps its place; a checkpoint file of the same name stays behind.
        resumed = [e for e in resumed if f"{CHECKPOINT_DIR}/{e.path}" not in taken]
    return c.CheckpointPlan(
        manifest_key, presigned_url(secret, base, "PUT", client_id, manifest_key, expires),
        slots, settings.checkpoint_max_bytes, settings.checkpoint_max_files,
        settings.checkpoint_interval_s, resumed, source,
    )


def _last_checkpoint(
    store: ObjectStore, settings: Settings, client_id: str, job_id: str
) -> tuple[list[c.ManifestEntry], int]:
    """The last complete checkpoint, each file checked against storage; none: ([], 0)."""
    key = checkpoint_manifest_key(job_id)
    try:
        info, chunks = store.open(client_id, key)
    except StorageError:
        return [], 0  # the job never wrote one
    if info.size > MANIFEST_LIMIT:
        raise ValueError(f"{key} is larger than {MANIFEST_LIMIT} bytes")
    doc = json.loads(b"".join(chunks))
    entries = []
    for f in doc["files"]:
        path, file_key, sha256, size = f["path"], f["key"], f["sha256"], f["size"]
        if not isinstance(path, str) or check_relative_path(path) != path:
            raise ValueError(f"checkpoint path {path!r} is not a plain relative path")
        if not isinstance(file_key, str) or not file_key.startswith(f"jobs/{job_id}/checkpoint/"):
            raise ValueError(f"checkpoint file {path!r} is stored outside the job's checkpoint")
        stored = store.stat(client_id, file_key)
        if (stored.sha256, stored.size) != (sha256, size):
            raise ValueError(f"checkpoint file {path!r} in storage does not match the manifest")
        entries.append(c.ManifestEntry(path, file_key, sha256, size))
    if len(entries) > settings.checkpoint_max_files:
        raise ValueError(f"{len(entries)} files, more than {settings.checkpoint_max_files}")
    if sum(e.size for e in entries) > settings.checkpoint_max_bytes:
        raise ValueError(f"more than {settings.checkpoint_max_bytes} bytes")
    return entries, int(doc.get("attempt", 0))

