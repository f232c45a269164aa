"""The Provider aggregate: a provider's GPUs, their reservations and its outcomes.

Reservations live on the provider so that reserving GPUs is one optimistic
save: two allocators that pick the same GPU conflict on the aggregate version
and one of them retries, so no GPU is ever booked twice.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError
from domain.ids import business_id
from domain.reputation import OUTCOMES, reputation_score

RUNTIMES = ("process", "docker")


class Provider(Aggregate):
    @staticmethod
    def create_id(provider_id: str, **_: Any) -> UUID:
        return business_id("provider", provider_id)

    @event("ProviderRegistered")
    def __init__(
        self,
        provider_id: str,
        region: str,
        price_per_gpu_hour_micro: int,
        gpus: list[dict[str, Any]],
    ):
        self.provider_id = provider_id
        self.region = region
        self.price_per_gpu_hour_micro = price_per_gpu_hour_micro
        self.gpus = gpus
        self.status = "online"
        self.reservations: dict[str, list[int]] = {}
        self.outcomes: list[str] = []
        self.outcome_jobs: list[str] = []
        self.runtimes: list[str] = ["process"]

    @property
    def reputation(self) -> float:
        return reputation_score(self.outcomes)

    def free_gpu_indexes(self) -> list[int]:
        busy = {i for idx in self.reservations.values() for i in idx}
        return [g["index"] for g in self.gpus if g["index"] not in busy]

    def rejoin(self, region: str, price_micro: int, gpus: list[dict[str, Any]]) -> None:
        """A restarted agent declares itself again; only a change is recorded."""
        if (
            self.status == "online"
            and region == self.region
            and price_micro == self.price_per_gpu_hour_micro
            and gpus == self.gpus
        ):
            return
        self._rejoined(region=region, price_per_gpu_hour_micro=price_micro, gpus=gpus)

    def declare_runtimes(self, runtimes: list[str]) -> None:
        """Which ways to run a job the agent offers (process, docker)."""
        unknown = sorted(set(runtimes) - set(RUNTIMES))
        if unknown or not runtimes:
            raise DomainError(f"runtimes: {unknown or 'none'}; each one of {', '.join(RUNTIMES)}")
        if sorted(runtimes) != sorted(self.runtimes):
            self._runtimes_declared(runtimes=sorted(runtimes))

    def reserve(self, job_id: str, gpu_indexes: list[int]) -> None:
        if self.reservations.get(job_id) == gpu_indexes:
            return
        if job_id in self.reservations:
            raise DomainError(f"job {job_id} already holds GPUs on {self.provider_id}")
        free = set(self.free_gpu_indexes())
        taken = [i for i in gpu_indexes if i not in free]
        if taken:
            raise DomainError(f"GPUs {taken} on {self.provider_id} are not free")
        self._reserved(job_id=job_id, gpu_indexes=gpu_indexes)

    def release(self, job_id: str) -> None:
        if job_id in self.reservations:
            self._released(job_id=job_id)

    def mark_lost(self, job_id: str, reason: str) -> None:
        if self.status != "lost":
            self._lost(job_id=job_id, reason=reason)

    def record_outcome(self, job_id: str, outcome: str) -> None:
        if outcome not in OUTCOMES:
            raise DomainError(f"unknown outcome {outcome!r}; one of {', '.join(OUTCOMES)}")
        if job_id in self.outcome_jobs:
            return
        self._outcome(job_id=job_id, outcome=outcome)

    @event("ProviderRejoined")
    def _rejoined(self, region: str, price_per_gpu_hour_micro: int, gpus: list[dict[str, Any]]):
        self.region = region
        self.price_per_gpu_hour_micro = price_per_gpu_hour_micro
        self.gpus = gpus
        self.status = "online"

    @event("RuntimesDeclared")
    def _runtimes_declared(self, runtimes: list[str]) -> None:
        self.runtimes = runtimes

    @event("GpusReserved")
    def _reserved(self, job_id: str, gpu_indexes: list[int]) -> None:
        self.reservations[job_id] = gpu_indexes

    @event("GpusReleased")
    def _released(self, job_id: str) -> None:
        del self.reservations[job_id]

    @event("ProviderMarkedLost")
    def _lost(self, job_id: str, reason: str) -> None:
        self.status = "lost"

    @event("ReputationRecorded")
    def _outcome(self, job_id: str, outcome: str) -> None:
        self.outcomes.append(outcome)
        self.outcome_jobs.append(job_id)


class Directory(Aggregate):
    """The list of providers that ever joined, so allocation can find them."""

    @staticmethod
    def create_id(**_: Any) -> UUID:
        return business_id("directory", "providers")

    @event("DirectoryOpened")
    def __init__(self) -> None:
        self.provider_ids: list[str] = []

    def add(self, provider_id: str) -> None:
        if provider_id not in self.provider_ids:
            self._joined(provider_id=provider_id)

    @event("ProviderJoined")
    def _joined(self, provider_id: str) -> None:
        self.provider_ids.append(provider_id)
