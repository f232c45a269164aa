"""The Provider aggregate: a provider's GPUs, their reservations and its outcomes.

Reservations live on the provider so that reserving GPUs is one optimistic
save: two allocators that pick the same GPU conflict on the aggregate version
and one of them retries, so no GPU is ever booked twice.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError
from domain.ids import business_id
from domain.limits import GPU_INDEX, OUTVOTES, PRICE, SPENT, check_gpus
from domain.reputation import OUTCOMES, Reputation, reputation

RUNTIMES = ("process", "docker")
# How a provider isolates jobs: bubblewrap (process runtime) with each job's memory,
# processes and CPU limited as a whole in control groups of its own; bubblewrap where the
# agent could make no control groups (not root, a container without cgroup rights), so each
# process is limited alone and a job's memory is bounded by processes x the limit
# ("bwrap-rlimits", worker_gpu/cgroup.py); Docker; or not at all (an agent started with
# --unsafe-no-sandbox).
SANDBOXES = ("bwrap", "bwrap-rlimits", "docker", "none")


def gpu_status(
    provider_online: bool, index: int, suspended: Collection[int], degraded: Mapping[str, str],
    busy: Collection[int],
) -> tuple[str, str]:
    """(status, reason) of one GPU: offline, suspended, degraded (with why), busy or online
    (free), in that order of precedence. The one rule, for the aggregate and the views."""
    if not provider_online:
        return "offline", ""
    if index in suspended:
        return "suspended", ""
    if str(index) in degraded:
        return "degraded", degraded[str(index)]
    if index in busy:
        return "busy", ""
    return "online", ""


def check_declaration(price_micro: int, gpus: list[dict[str, Any]]) -> None:
    """What an agent declares, within the bounds (domain/limits.py); OutOfBounds otherwise."""
    PRICE.check("price_per_gpu_hour_micro", price_micro)
    check_gpus("gpus", gpus)


class Provider(Aggregate):
    # Lists of strings or numbers, copied flat by the application's aggregate cache.
    FLAT_LISTS = ("outcomes", "outcome_jobs", "outcome_times", "outcome_clients",
                  "outcome_spent", "outcome_outvotes", "runtimes", "suspended")

    # v2 added per-GPU suspension and health and the client behind each reservation;
    # v3 the time of each outcome (reputation decays with age); v4 the client of each;
    # v5 what that client had paid for verified work before it; v6 how many `outvoted`
    # outcomes that client's jobs had caused before it.
    class_version = 6

    class ReputationRecorded(Aggregate.Event):
        """One outcome of the provider's work. Version 2 added `at` (unix time), version 3
        `client_id`: the client whose job it was, as the control plane has it from the job
        ("" where it was not recorded, for a canary's outcome, which is never `outvoted`, and
        for the outcome of a job the network does not know). Version 4 added
        `client_spent_micro`: what that client had paid for verified work before this job,
        as the control plane has it from the client's ledger account (domain/app_jobs.py
        `client_standing`; 0 where there is no client), never from a provider or a
        client: an `outvoted` counts only from a client that paid enough
        (domain/reputation.py). Version 5 added `client_outvotes_before`: how many `outvoted`
        outcomes that client's jobs had caused before this one, against any provider, as the
        control plane counts them on the client's ledger account (domain/ledger.py
        `Account.outvotes_caused`; 0 where there is no client), never from a provider or a
        client: each one raises the spend the client's next `outvoted` needs to count."""

        class_version = 5
        job_id: str
        outcome: str
        at: float
        client_id: str
        client_spent_micro: int
        client_outvotes_before: int

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            stamp = state["timestamp"]
            state["at"] = stamp.timestamp() if isinstance(stamp, datetime) else 0.0

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            # Not known: an `outvoted` of an unknown client never counts in the score
            # (domain/reputation.py), so a log from before scores as it did.
            state["client_id"] = ""

        @staticmethod
        def upcast_v3_v4(state: dict[str, Any]) -> None:
            # Not known: an `outvoted` of a client that paid nothing never counts, as one of
            # no known client never did (domain/reputation.py).
            state["client_spent_micro"] = 0

        @staticmethod
        def upcast_v4_v5(state: dict[str, Any]) -> None:
            # Not counted then: judged as it was when recorded (the spend alone).
            state["client_outvotes_before"] = 0

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state.setdefault("reservation_clients", {})
        state.setdefault("suspended", [])
        state.setdefault("degraded", {})

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        # Times of outcomes before v3 snapshots are not known: the snapshot's own time.
        stamp = state.get("_modified_on")
        at = stamp.timestamp() if isinstance(stamp, datetime) else 0.0
        state.setdefault("outcome_times", [at] * len(state.get("outcomes", [])))

    @staticmethod
    def upcast_v3_v4(state: dict[str, Any]) -> None:
        state.setdefault("outcome_clients", [""] * len(state.get("outcomes", [])))

    @staticmethod
    def upcast_v4_v5(state: dict[str, Any]) -> None:
        state.setdefault("outcome_spent", [0] * len(state.get("outcomes", [])))

    @staticmethod
    def upcast_v5_v6(state: dict[str, Any]) -> None:
        state.setdefault("outcome_outvotes", [0] * len(state.get("outcomes", [])))

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
        self.outcome_times: list[float] = []  # unix time of each outcome
        self.outcome_clients: list[str] = []  # the client of each outcome's job ("" unknown)
        # what that client had paid for verified work before it, in micro-credits
        self.outcome_spent: list[int] = []
        # how many `outvoted` outcomes that client's jobs had caused before it
        self.outcome_outvotes: list[int] = []
        self.runtimes: list[str] = ["process"]
        self.sandbox = ""  # unknown: registered by an agent from before sandboxes were declared
        self.reservation_clients: dict[str, str] = {}  # job id -> the client it runs for
        self.suspended: list[int] = []  # GPU indexes the provider took out of service
        # GPU index (as text: snapshots are JSON) -> why it is unhealthy (ECC, Xid errors)
        self.degraded: dict[str, str] = {}

    @property
    def reputation(self) -> float:
        """The score now (see domain/reputation.py); it drifts as outcomes age."""
        return self.reputation_at(time.time()).score

    def reputation_at(self, as_of: float) -> Reputation:
        return reputation(list(zip(self.outcomes, self.outcome_times, strict=True)), as_of,
                          self.outcome_clients, self.outcome_spent, self.outcome_outvotes)

    def free_gpu_indexes(self) -> list[int]:
        """GPUs that could take a job now: not reserved, not suspended, not degraded."""
        busy = {i for idx in self.reservations.values() for i in idx}
        busy.update(self.suspended)
        busy.update(int(i) for i in self.degraded)
        return [g["index"] for g in self.gpus if g["index"] not in busy]

    def gpu_status(self, index: int, online: bool) -> str:
        """offline, suspended, degraded, busy or online (free), in that order of precedence."""
        busy = {i for idx in self.reservations.values() for i in idx}
        return gpu_status(online and self.status == "online", index, self.suspended,
                          self.degraded, busy)[0]

    def _check_index(self, index: int) -> None:
        GPU_INDEX.check("gpu_index", index)
        if index not in {g["index"] for g in self.gpus}:
            known = ", ".join(str(g["index"]) for g in self.gpus)
            raise DomainError("gpu_index",
                              f"{self.provider_id} has no GPU {index} (it has {known})")

    def suspend_gpu(self, index: int) -> None:
        """Take one GPU out of service; a job running on it finishes first."""
        self._check_index(index)
        if index not in self.suspended:
            self._gpu_suspended(index=index)

    def resume_gpu(self, index: int) -> None:
        self._check_index(index)
        if index in self.suspended:
            self._gpu_resumed(index=index)

    def set_price(self, price_micro: int) -> None:
        """New jobs pay the new price; running ones keep the price they were allocated at."""
        PRICE.check("price_per_gpu_hour_micro", price_micro)
        if price_micro != self.price_per_gpu_hour_micro:
            self._price_changed(price_per_gpu_hour_micro=price_micro)

    def report_health(self, index: int, healthy: bool, reason: str = "") -> None:
        """A GPU with ECC or Xid errors is not given work until it reports healthy again."""
        self._check_index(index)
        if not healthy and self.degraded.get(str(index)) != (reason or "unhealthy"):
            self._gpu_degraded(index=index, reason=reason or "unhealthy")
        elif healthy and str(index) in self.degraded:
            self._gpu_recovered(index=index)

    def go_offline(self, reason: str) -> None:
        """Missed heartbeats: a status change, recorded once (the samples are not events)."""
        if self.status == "online":
            self._went_offline(reason=reason)

    def come_online(self) -> None:
        """Heartbeats again after going silent, or after a run was lost with it."""
        if self.status in ("offline", "lost"):
            self._came_online()

    def rejoin(self, region: str, price_micro: int, gpus: list[dict[str, Any]]) -> None:
        """A restarted agent declares itself again; only a change is recorded."""
        check_declaration(price_micro, gpus)
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
            raise DomainError("runtimes", f"{unknown or 'none'}; each one of {', '.join(RUNTIMES)}")
        if sorted(runtimes) != sorted(self.runtimes):
            self._runtimes_declared(runtimes=sorted(runtimes))

    def declare_sandbox(self, sandbox: str) -> None:
        """How the agent isolates jobs; "none" is shown to the network as it is."""
        if sandbox not in SANDBOXES:
            raise DomainError("sandbox", f"{sandbox!r}; one of {', '.join(SANDBOXES)}")
        if sandbox != getattr(self, "sandbox", ""):
            self._sandbox_declared(sandbox=sandbox)

    def reserve(self, job_id: str, gpu_indexes: list[int], client_id: str = "") -> None:
        if self.reservations.get(job_id) == gpu_indexes:
            return
        if job_id in self.reservations:
            raise DomainError("", f"job {job_id} already holds GPUs on {self.provider_id}")
        free = set(self.free_gpu_indexes())
        taken = [i for i in gpu_indexes if i not in free]
        if taken:
            raise DomainError("", f"GPUs {taken} on {self.provider_id} are not free")
        self._reserved(job_id=job_id, gpu_indexes=gpu_indexes, client_id=client_id)

    def gpus_held_by(self, client_id: str) -> int:
        return sum(
            len(self.reservations[job]) for job, c in self.reservation_clients.items()
            if c == client_id and job in self.reservations
        )

    def release(self, job_id: str) -> None:
        if job_id in self.reservations:
            self._released(job_id=job_id)

    def mark_lost(self, job_id: str, reason: str) -> None:
        if self.status != "lost":
            self._lost(job_id=job_id, reason=reason)

    def has_outcome(self, job_id: str) -> bool:
        return job_id in self.outcome_jobs

    def record_outcome(self, job_id: str, outcome: str, at: float | None = None,
                       client_id: str = "", client_spent_micro: int = 0,
                       client_outvotes_before: int = 0) -> bool:
        """`client_id`: the client of the job, from the job (never from a provider);
        `client_spent_micro`: what it had paid for verified work before, from its ledger;
        `client_outvotes_before`: the `outvoted` outcomes its jobs had caused before, from
        its ledger. One outcome per `job_id`: False where it was recorded before."""
        if outcome not in OUTCOMES:
            raise DomainError("", f"unknown outcome {outcome!r}; one of {', '.join(OUTCOMES)}")
        SPENT.check("client_spent_micro", client_spent_micro)
        OUTVOTES.check("client_outvotes_before", client_outvotes_before)
        if self.has_outcome(job_id):
            return False
        self._outcome(job_id=job_id, outcome=outcome, at=time.time() if at is None else at,
                      client_id=client_id, client_spent_micro=client_spent_micro,
                      client_outvotes_before=client_outvotes_before)
        return True

    @event("ProviderRejoined")
    def _rejoined(self, region: str, price_per_gpu_hour_micro: int, gpus: list[dict[str, Any]]):
        self.region = region
        self.price_per_gpu_hour_micro = price_per_gpu_hour_micro
        self.gpus = gpus
        self.status = "online"

    @event("RuntimesDeclared")
    def _runtimes_declared(self, runtimes: list[str]) -> None:
        self.runtimes = runtimes

    @event("SandboxDeclared")
    def _sandbox_declared(self, sandbox: str) -> None:
        self.sandbox = sandbox

    @event("GpusReserved")
    def _reserved(self, job_id: str, gpu_indexes: list[int], client_id: str = "") -> None:
        self.reservations[job_id] = gpu_indexes
        self.reservation_clients[job_id] = client_id

    @event("GpusReleased")
    def _released(self, job_id: str) -> None:
        del self.reservations[job_id]
        self.reservation_clients.pop(job_id, None)

    @event("GpuSuspended")
    def _gpu_suspended(self, index: int) -> None:
        self.suspended = sorted([*self.suspended, index])

    @event("GpuResumed")
    def _gpu_resumed(self, index: int) -> None:
        self.suspended = [i for i in self.suspended if i != index]

    @event("PriceChanged")
    def _price_changed(self, price_per_gpu_hour_micro: int) -> None:
        self.price_per_gpu_hour_micro = price_per_gpu_hour_micro

    @event("GpuDegraded")
    def _gpu_degraded(self, index: int, reason: str) -> None:
        self.degraded[str(index)] = reason

    @event("GpuRecovered")
    def _gpu_recovered(self, index: int) -> None:
        del self.degraded[str(index)]

    @event("ProviderWentOffline")
    def _went_offline(self, reason: str) -> None:
        self.status = "offline"

    @event("ProviderCameOnline")
    def _came_online(self) -> None:
        self.status = "online"

    @event("ProviderMarkedLost")
    def _lost(self, job_id: str, reason: str) -> None:
        self.status = "lost"

    @event(ReputationRecorded)
    def _outcome(self, job_id: str, outcome: str, at: float, client_id: str,
                 client_spent_micro: int, client_outvotes_before: int) -> None:
        self.outcomes.append(outcome)
        self.outcome_jobs.append(job_id)
        self.outcome_times.append(at)
        self.outcome_clients.append(client_id)
        self.outcome_spent.append(client_spent_micro)
        self.outcome_outvotes.append(client_outvotes_before)


class Directory(Aggregate):
    """The list of providers that ever joined, so allocation can find them."""

    # Lists of strings or numbers, copied flat by the application's aggregate cache.
    FLAT_LISTS = ("provider_ids",)

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
