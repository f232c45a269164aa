"""Control-plane activities for known-answer canaries: plan, start, close.

The canary's run itself goes through the job activities (prepare_transfers,
record_job_step, mark_provider_lost, release_gpus) and the provider's own
stage/execute/upload: a canary is a job. Every activity here is safe to run
twice: starting and closing are idempotent in the Network, and the program is
put in storage under the same key with the same bytes.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.guard import Callers, ours
from activities.verify import integrity_problems
from domain.application import Network
from domain.canary import judge_canary, new_seed, staged_inputs
from domain.errors import DomainError, UnknownProvider
from domain.verification import canary_rate
from infra.settings import Settings
from infra.storage import ObjectStore, StorageError, delete_each
from protocol.spec import JobSpec
from readmodel.schema import ViewDB
from readmodel.telemetry import online_provider_ids
from workflows import contracts as c

log = logging.getLogger(__name__)


class CanaryActivities:
    def __init__(self, network: Network, views: ViewDB, store: ObjectStore, settings: Settings):
        self.network, self.views, self.store, self.settings = network, views, store, settings
        self.callers = Callers(network)

    @activity.defn(name=c.PLAN_CANARY, no_thread_cancel_exception=True)
    @ours
    def plan_canary(self, req: c.CanaryRequest) -> c.CanaryPlan:
        """Whether a canary follows this provider's accepted run: at its canary rate."""
        if not self.settings.canaries:
            return c.CanaryPlan(False, "canaries are off on this network")
        try:
            outcomes = self.network.provider(req.provider_id).outcomes
        except UnknownProvider:
            return c.CanaryPlan(False, f"no provider {req.provider_id}")
        override = self.settings.canary_rate_override
        comparable = True
        origin = self.network.find_job(req.job_id)
        if origin is not None:  # a job that cannot be compared gets a canary in its stead
            comparable = JobSpec.recorded(origin.spec).verification.comparable
        rate = canary_rate(outcomes, comparable) if override is None else override
        if not 0.0 <= req.draw < 1.0 or req.draw >= rate:
            return c.CanaryPlan(False, f"canary rate {rate:.3f} for {req.provider_id}")
        return c.CanaryPlan(
            True,
            f"canary rate {rate:.3f} for {req.provider_id}",
            new_seed(secrets.token_bytes(16)),
            random.uniform(0.0, max(0.0, self.settings.canary_max_delay_s)),
        )

    @activity.defn(name=c.START_CANARY, no_thread_cancel_exception=True)
    @ours
    def start_canary(self, req: c.CanaryStartRequest) -> c.CanaryStart:
        """Submit the canary job to exactly this provider, reserve its GPUs, stage the program."""
        started = self.network.start_canary(
            req.origin_job_id, req.provider_id, req.seed,
            online_provider_ids(self.views, self.settings), self.settings.canary_image,
        )
        if not started.started:
            return c.CanaryStart(False, started.reason)
        spec = JobSpec.recorded(self.network.job(started.job_id).spec)
        for ref, data in staged_inputs(spec):
            self.store.put(started.client_id, ref.key, [data], ref.digest)
        return c.CanaryStart(
            True, "", started.job_id, started.client_id, list(started.gpu_indexes),
            started.price_micro,
        )

    @activity.defn(name=c.CLOSE_CANARY, no_thread_cancel_exception=True)
    @ours
    def close_canary(self, req: c.CanaryReport) -> c.CanaryResult:
        """Judge the run against the known answer and storage; pay, record, finish."""
        canary = self.network.canary(req.origin_job_id, req.provider_id)
        if canary is None:
            raise ApplicationError(
                f"no canary after job {req.origin_job_id} on {req.provider_id}",
                type="UnknownJob", non_retryable=True,
            )
        if req.lost:
            outcome, reason = "lost", f"{req.provider_id} stopped answering"
        elif req.void:
            outcome, reason = "void", req.void
        else:
            spec = JobSpec.recorded(self.network.job(canary.job_id).spec)
            report = c.ReplicaReport(
                req.attempt, req.provider_id, canary.price_micro, req.exit_code, req.timed_out,
                req.gpu_ms, req.manifest, req.missing,
            )
            judged = judge_canary(
                canary.expected_outputs(), req.exit_code, req.timed_out,
                [(m.path, m.digest, m.size) for m in req.manifest], req.missing,
                integrity_problems(self.store, canary.client_id, canary.job_id, spec, report),
            )
            outcome, reason = judged.outcome, judged.reason
        try:
            ended = self.network.close_canary(
                req.origin_job_id, req.provider_id, outcome, reason, req.gpu_ms
            )
        except DomainError as err:
            raise ApplicationError(str(err), type=type(err).__name__, non_retryable=True) from err
        if ended.outcome == "success":
            self._drop_files(canary.client_id)
        return c.CanaryResult(
            req.origin_job_id, req.provider_id, canary.job_id, ended.outcome, ended.reason,
            ended.paid_micro,
        )

    def _drop_files(self, space: str) -> None:
        """A passed canary's inputs and outputs are of no more use; a failed one's stay, as
        the evidence behind its outcome. Best effort: the canary is closed either way."""
        try:
            delete_each(self.store, space, [o.key for o in self.store.list(space)])
        except (StorageError, OSError) as err:
            log.warning("canary files stay in storage space %s: %s", space, err)

    def all(self) -> list[Callable[..., Any]]:
        return [self.plan_canary, self.start_canary, self.close_canary]
