"""Typed results, parsed from the API's camelCase JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from protocol import digest

TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "CANCELLED"})
TERMINAL_EVENTS = frozenset({"JobSucceeded", "JobFailed", "JobRejected", "JobCancelled"})


@dataclass(frozen=True)
class OutputFile:
    path: str
    key: str
    digest: str  # "blake3:<hex>" (protocol/digest.py); from an API before BLAKE3, "sha256:…"
    size: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OutputFile:
        return cls(path=d["path"], key=d["key"], digest=digest.of_record(d),
                   size=int(d["size"]))


@dataclass(frozen=True)
class JobEvent:
    seq: int
    job_id: str
    type: str
    at: str
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobEvent:
        data = d.get("data") or {}
        if isinstance(data, str):  # a JSON scalar some servers send as text
            data = json.loads(data) if data else {}
        return cls(
            seq=int(d["seq"]),
            job_id=d["jobId"],
            type=d["type"],
            at=d["at"],
            data=data if isinstance(data, dict) else {"value": data},
        )

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


@dataclass(frozen=True)
class JobLogChunk:
    """A piece of a job's output as its run printed it (`jobLog`)."""

    seq: int
    attempt: int
    provider_id: str
    at: str
    text: str
    skipped_bytes: int = 0  # output of the run before it that is not shown

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobLogChunk:
        return cls(seq=int(d["seq"]), attempt=int(d["attempt"]), provider_id=d["providerId"],
                   at=d["at"], text=str(d["text"]), skipped_bytes=int(d.get("skippedBytes") or 0))


@dataclass(frozen=True)
class Job:
    id: str
    client_id: str
    name: str
    state: str
    reason: str
    provider_id: str | None
    queue_position: int | None
    max_cost_micro: int
    cost_micro: int | None
    submitted_at: str
    updated_at: str
    outputs: list[OutputFile] = field(default_factory=list)
    events: list[JobEvent] = field(default_factory=list)
    queue: str = ""
    priority: int = 0
    expected_start: str | None = None  # an estimate while QUEUED (see the API's description)
    waiting_for: list[str] = field(default_factory=list)  # QUEUED or VERIFYING: why, in words
    # What the network said at submit (only on the job a submit returns): e.g. that no
    # provider registered could ever run its spec.
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Job:
        return cls(
            id=d["id"],
            client_id=d["clientId"],
            name=d["name"],
            state=d["state"],
            reason=d.get("reason") or "",
            provider_id=d.get("providerId"),
            queue_position=d.get("queuePosition"),
            max_cost_micro=int(d["maxCostMicro"]),
            cost_micro=None if d.get("costMicro") is None else int(d["costMicro"]),
            submitted_at=d["submittedAt"],
            updated_at=d["updatedAt"],
            outputs=[OutputFile.from_json(o) for o in d.get("outputs") or []],
            events=[JobEvent.from_json(e) for e in d.get("events") or []],
            queue=d.get("queue") or "",
            priority=int(d.get("priority") or 0),
            expected_start=d.get("expectedStart"),
            waiting_for=[str(w) for w in d.get("waitingFor") or []],
            warnings=[str(w) for w in d.get("warnings") or []],
        )

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class Account:
    client_id: str
    balance_micro: int
    escrow_micro: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Account:
        return cls(
            client_id=d["clientId"],
            balance_micro=int(d["balanceMicro"]),
            escrow_micro=int(d["escrowMicro"]),
        )


@dataclass(frozen=True)
class Gpu:
    index: int
    model: str
    memory_mb: int
    busy_job_id: str | None
    status: str = ""  # online (free), busy, suspended, degraded, offline
    reason: str = ""  # why degraded or offline

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Gpu:
        return cls(
            index=int(d["index"]),
            model=d["model"],
            memory_mb=int(d["memoryMb"]),
            busy_job_id=d.get("busyJobId"),
            status=d.get("status") or "",
            reason=d.get("reason") or "",
        )


@dataclass(frozen=True)
class GpuReading:
    index: int
    utilization_pct: int | None = None
    memory_used_mb: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    ecc_errors: int | None = None
    xid_errors: int | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GpuReading:
        return cls(
            index=int(d["index"]),
            utilization_pct=d.get("utilizationPct"),
            memory_used_mb=d.get("memoryUsedMb"),
            temperature_c=d.get("temperatureC"),
            power_w=d.get("powerW"),
            ecc_errors=d.get("eccErrors"),
            xid_errors=d.get("xidErrors"),
        )


@dataclass(frozen=True)
class TelemetrySample:
    at: str
    gpus: list[GpuReading] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TelemetrySample:
        return cls(at=d["at"], gpus=[GpuReading.from_json(g) for g in d.get("gpus") or []])


@dataclass(frozen=True)
class Provider:
    provider_id: str
    region: str
    status: str
    last_heartbeat_at: str | None
    reputation: float
    earnings_micro: int | None  # None: not your provider
    gpus: list[Gpu] = field(default_factory=list)
    status_reason: str = ""
    price_per_gpu_hour_micro: int | None = None
    telemetry: list[TelemetrySample] = field(default_factory=list)  # oldest first

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Provider:
        price = d.get("pricePerGpuHourMicro")
        return cls(
            provider_id=d["providerId"],
            region=d["region"],
            status=d["status"],
            last_heartbeat_at=d.get("lastHeartbeatAt"),
            reputation=float(d["reputation"]),
            earnings_micro=None if d.get("earningsMicro") is None else int(d["earningsMicro"]),
            gpus=[Gpu.from_json(g) for g in d.get("gpus") or []],
            status_reason=d.get("statusReason") or "",
            price_per_gpu_hour_micro=None if price is None else int(price),
            telemetry=[TelemetrySample.from_json(t) for t in d.get("telemetry") or []],
        )


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    transfer_id: str
    amount_micro: int
    balance_micro: int
    counterparty: str
    kind: str
    memo: str
    at: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LedgerEntry:
        return cls(
            seq=int(d["seq"]), transfer_id=d["transferId"], amount_micro=int(d["amountMicro"]),
            balance_micro=int(d["balanceMicro"]), counterparty=d["counterparty"], kind=d["kind"],
            memo=d["memo"], at=d["at"],
        )


@dataclass(frozen=True)
class ProviderEarnings:
    provider_id: str
    balance_micro: int
    earned_micro: int
    withdrawn_micro: int
    entries: list[LedgerEntry] = field(default_factory=list)  # newest first
    verified_micro: int = 0  # of earned_micro: for runs of jobs that were verified

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ProviderEarnings:
        return cls(
            provider_id=d["providerId"], balance_micro=int(d["balanceMicro"]),
            earned_micro=int(d["earnedMicro"]), withdrawn_micro=int(d["withdrawnMicro"]),
            entries=[LedgerEntry.from_json(e) for e in d.get("entries") or []],
            verified_micro=int(d.get("verifiedMicro") or 0),
        )


@dataclass(frozen=True)
class Queue:
    node_id: str
    name: str
    gpu_models: list[str]
    waiting: int
    priority_levels: int = 1
    max_gpus_per_client: int = 0  # 0: no cap
    fair_share: bool = True

    @property
    def ref(self) -> str:
        return f"{self.node_id}/{self.name}"

    @classmethod
    def from_json(cls, node_id: str, d: dict[str, Any]) -> Queue:
        return cls(
            node_id=node_id, name=d["name"], gpu_models=list(d.get("gpuModels") or []),
            waiting=int(d.get("waiting") or 0), priority_levels=int(d.get("priorityLevels", 1)),
            max_gpus_per_client=int(d.get("maxGpusPerClient", 0)),
            fair_share=bool(d.get("fairShare", True)),
        )


@dataclass(frozen=True)
class Node:
    node_id: str
    region: str
    operator: str
    provider_ids: list[str] = field(default_factory=list)
    queues: list[Queue] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Node:
        return cls(
            node_id=d["nodeId"], region=d["region"], operator=d["operator"],
            provider_ids=list(d.get("providerIds") or []),
            queues=[Queue.from_json(d["nodeId"], q) for q in d.get("queues") or []],
        )


@dataclass(frozen=True)
class QueuedJob:
    position: int
    job_id: str
    name: str  # "" for another client's job
    gpus: int
    gpu_model: str | None
    priority: int
    waiting_since: str
    expected_start: str | None
    mine: bool
    waiting_for: list[str] = field(default_factory=list)  # why, in words (the first in line)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> QueuedJob:
        return cls(
            position=int(d["position"]), job_id=d["jobId"], name=d.get("name") or "",
            gpus=int(d["gpus"]), gpu_model=d.get("gpuModel"), priority=int(d.get("priority", 0)),
            waiting_since=d["waitingSince"], expected_start=d.get("expectedStart"),
            mine=bool(d.get("mine")),
            waiting_for=[str(w) for w in d.get("waitingFor") or []],
        )


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    digest: str  # as OutputFile's

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StoredObject:
        return cls(key=d["key"], size=int(d["size"]), digest=digest.of_record(d))


@dataclass(frozen=True)
class User:
    id: str
    email: str
    roles: list[str]
    client_id: str | None
    provider_ids: list[str] = field(default_factory=list)
    node_ids: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> User:
        return cls(
            id=str(d["id"]), email=d["email"], roles=list(d.get("roles") or []),
            client_id=d.get("clientId"), provider_ids=list(d.get("providerIds") or []),
            node_ids=list(d.get("nodeIds") or []),
        )


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: list[str]
    created_at: str
    key: str | None = None  # only in the answer that created it

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ApiKey:
        return cls(id=str(d["id"]), name=d["name"], scopes=list(d.get("scopes") or []),
                   created_at=d["createdAt"], key=d.get("key"))
