"""Canaries: known-answer jobs on one provider (see domain/canary.py, workflows/canary.py,
activities/canary.py)."""

from __future__ import annotations

from eventsourcing.domain import Aggregate

from domain.app_base import NAME, Base
from domain.canary import Canary, CanaryEnded, CanaryStarted, make_canary
from domain.errors import (
    UnknownJob,
)
from domain.job import Job
from domain.ledger import (
    CHECKS,
    provider_account,
    transfer,
)
from domain.provider import Provider
from protocol.money import cost_of_gpu_time
from protocol.spec import JobSpec


class Canaries(Base):
    """Known-answer jobs the network sends to a provider to check it."""

    name = NAME  # eventsourcing names an application after its class otherwise

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
                # In the clear: a canary's env is its seed and size, which its Canary
                # records anyway (the known answer is checked against them).
                sealed_env="",
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
                raise UnknownJob("", f"no canary after job {origin_job_id} on {provider_id}")
            if canary.outcome is not None:
                return CanaryEnded(canary.outcome, canary.reason, canary.paid_micro), []
            job, provider = self.job(canary.job_id), self.provider(provider_id)
            changed: list[Aggregate] = [canary, job, provider]
            honest, paid = outcome == "success", 0
            if honest:
                cap = JobSpec.recorded(job.spec).max_run_cost_micro
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
