"""Typed results, parsed from the API's camelCase JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "CANCELLED"})
TERMINAL_EVENTS = frozenset({"JobSucceeded", "JobFailed", "JobRejected", "JobCancelled"})


@dataclass(frozen=True)
class OutputFile:
    path: str
    key: str
    sha256: str
    size: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OutputFile:
        return cls(path=d["path"], key=d["key"], sha256=d["sha256"], size=int(d["size"]))


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

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Gpu:
        return cls(
            index=int(d["index"]),
            model=d["model"],
            memory_mb=int(d["memoryMb"]),
            busy_job_id=d.get("busyJobId"),
        )


@dataclass(frozen=True)
class Provider:
    provider_id: str
    region: str
    status: str
    last_heartbeat_at: str | None
    reputation: float
    earnings_micro: int
    gpus: list[Gpu] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Provider:
        return cls(
            provider_id=d["providerId"],
            region=d["region"],
            status=d["status"],
            last_heartbeat_at=d.get("lastHeartbeatAt"),
            reputation=float(d["reputation"]),
            earnings_micro=int(d["earningsMicro"]),
            gpus=[Gpu.from_json(g) for g in d.get("gpus") or []],
        )


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StoredObject:
        return cls(key=d["key"], size=int(d["size"]), sha256=d["sha256"])
