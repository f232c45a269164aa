"""GraphQL types, the request context and the loaders the resolvers share."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Annotated, Any, NewType

import strawberry
from strawberry.fastapi import BaseContext
from strawberry.scalars import JSON
from strawberry.types import Info

from api.services import Services
from domain.money import cost_of_gpu_time
from domain.node import DEFAULT_NODE
from domain.spec import JobSpec
from infra.db import online_provider_ids
from infra.storage import check_client_id

BigInt = NewType("BigInt", int)
BIG_INT_SCALAR = strawberry.scalar(
    NewType("BigInt", int),
    name="BigInt",
    serialize=int,
    parse_value=int,
    description="An integer beyond GraphQL's 32 bits: money is in micro-credits.",
)

PROVIDER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class Context(BaseContext):
    def __init__(self, services: Services):
        super().__init__()
        self.services = services

    @property
    def client_id(self) -> str:
        """The caller: header X-Gpgpu-Client, or `client` in the websocket's init payload."""
        params = self.connection_params if isinstance(self.connection_params, dict) else {}
        header = self.request.headers.get("x-gpgpu-client") if self.request else None
        client = params.get("client") or header or "demo"
        return check_client_id(str(client))


I = Info[Context, None]  # noqa: E741


@strawberry.type
class OutputFile:
    path: str
    key: str
    sha256: str
    size: BigInt


@strawberry.type
class JobEvent:
    seq: int
    job_id: str
    type: str
    at: str
    data: JSON

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobEvent:
        return cls(
            seq=row["seq"], job_id=row["job_id"], type=row["type"], at=row["at"],
            data=json.loads(row["data"]),
        )


EVENTS_SQL = "SELECT * FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq"


@strawberry.type
class ProviderEvent:
    seq: int
    provider_id: str
    type: str
    at: str
    data: JSON


@strawberry.type
class LedgerEntry:
    seq: int
    transfer_id: str
    amount_micro: BigInt
    balance_micro: BigInt
    counterparty: str
    kind: str
    memo: str
    at: str


@strawberry.type
class Queue:
    name: str
    gpu_models: list[str]
    waiting: int


@strawberry.type
class Node:
    node_id: str
    region: str
    operator: str
    provider_ids: list[str]
    queues: list[Queue]


@strawberry.type
class QueuedJob:
    position: int
    job_id: str
    name: str
    gpus: int
    gpu_model: str | None
    waiting_since: str
    mine: bool


@strawberry.type
class Job:
    id: strawberry.ID
    client_id: str
    name: str
    state: str
    reason: str
    provider_id: str | None
    max_cost_micro: BigInt
    cost_micro: BigInt | None
    submitted_at: str
    updated_at: str
    outputs: list[OutputFile]
    queued_position: strawberry.Private[int | None]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(
            id=strawberry.ID(row["job_id"]), client_id=row["client_id"], name=row["name"],
            state=row["state"], reason=row["reason"], provider_id=row["provider_id"],
            max_cost_micro=row["max_cost_micro"], cost_micro=row["cost_micro"],
            submitted_at=row["submitted_at"], updated_at=row["updated_at"],
            outputs=[OutputFile(**o) for o in json.loads(row["outputs"])],
            queued_position=row["queued_position"],
        )

    @strawberry.field(description="1 for the next job to be placed; null unless QUEUED")
    async def queue_position(self, info: I) -> int | None:
        if self.state != "QUEUED" or self.queued_position is None:
            return None
        rows = await info.context.services.query(
            "SELECT COUNT(*) AS n FROM jobs WHERE state = 'QUEUED' AND queued_position < ?"
            " AND queue = (SELECT queue FROM jobs WHERE job_id = ?)",
            (self.queued_position, str(self.id)),
        )
        return int(rows[0]["n"]) + 1

    @strawberry.field
    async def events(self, info: I) -> list[JobEvent]:
        rows = await info.context.services.query(EVENTS_SQL, (str(self.id), 0))
        return [JobEvent.from_row(r) for r in rows]


@strawberry.type
class Account:
    client_id: str
    balance_micro: BigInt
    escrow_micro: BigInt


@strawberry.type
class Gpu:
    index: int
    model: str
    memory_mb: int
    busy_job_id: str | None


@strawberry.type
class Provider:
    provider_id: str
    region: str
    status: str
    last_heartbeat_at: str | None
    reputation: float
    earnings_micro: BigInt
    price_per_gpu_hour_micro: BigInt
    runtimes: list[str]
    gpus: list[Gpu]


@strawberry.type
class FieldError:
    field: str
    message: str


@strawberry.type
class JobSubmitted:
    job: Job


@strawberry.type
class SpecRejected:
    errors: list[FieldError]


SubmitJobResult = Annotated[JobSubmitted | SpecRejected, strawberry.union("SubmitJobResult")]


@strawberry.type
class Offer:
    provider_id: str
    gpu_indexes: list[int]
    price_per_gpu_hour_micro: BigInt
    quote_micro: BigInt = strawberry.field(description="the most the job can cost here")
    reputation: float
    expected_start: str = strawberry.field(description="'now': these GPUs are free")


@strawberry.type
class Rejection:
    provider_id: str
    reason: str


@strawberry.type
class Explanation:
    eligible: list[Offer]
    rejected: list[Rejection]


ExplainResult = Annotated[Explanation | SpecRejected, strawberry.union("ExplainResult")]


async def explain_spec(services: Services, spec: JobSpec) -> Explanation:
    online = await asyncio.to_thread(online_provider_ids, services.views, services.settings)
    judged = await asyncio.to_thread(services.network.explain, spec, online)
    hours_ms = spec.resources.gpus * spec.timeout_s * 1000
    return Explanation(
        eligible=[
            Offer(
                provider_id=a.provider_id, gpu_indexes=a.gpu_indexes,
                price_per_gpu_hour_micro=BigInt(a.price_per_gpu_hour_micro),
                quote_micro=BigInt(cost_of_gpu_time(hours_ms, a.price_per_gpu_hour_micro)),
                reputation=a.reputation, expected_start="now",
            )
            for a in judged if a.eligible
        ],
        rejected=[Rejection(provider_id=a.provider_id, reason=a.reason)
                  for a in judged if not a.eligible],
    )


@strawberry.input
class GpuInput:
    index: int
    model: str
    memory_mb: int
    uuid: str = ""


@strawberry.input
class RegisterProviderInput:
    provider_id: str
    region: str
    price_per_gpu_hour_micro: BigInt
    gpus: list[GpuInput]
    runtimes: list[str] = strawberry.field(default_factory=lambda: ["process"])
    node: str = DEFAULT_NODE


async def load_job(info: I, job_id: str) -> Job | None:
    rows = await info.context.services.query(
        "SELECT * FROM jobs WHERE job_id = ? AND client_id = ?", (job_id, info.context.client_id)
    )
    return Job.from_row(rows[0]) if rows else None


async def load_providers(services: Services, provider_id: str | None = None) -> list[Provider]:
    where, params = ("WHERE p.provider_id = ?", (provider_id,)) if provider_id else ("", ())
    rows = await services.query(
        "SELECT p.*, l.last_heartbeat_at, a.balance_micro FROM providers p"
        " LEFT JOIN provider_liveness l ON l.provider_id = p.provider_id"
        " LEFT JOIN accounts a ON a.name = 'provider:' || p.provider_id"
        f" {where} ORDER BY p.provider_id",
        params,
    )
    cutoff = time.time() - services.settings.provider_offline_after_s
    out = []
    for r in rows:
        busy = {i: job for job, idx in json.loads(r["reservations"]).items() for i in idx}
        beat = r["last_heartbeat_at"]
        status = r["status"]
        if status == "online":
            status = "busy" if busy else "online"
            if beat is None or beat < cutoff:
                status = "offline"
        out.append(Provider(
            provider_id=r["provider_id"], region=r["region"], status=status,
            last_heartbeat_at=None if beat is None else time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(beat)),
            reputation=r["reputation"], earnings_micro=BigInt(r["balance_micro"] or 0),
            price_per_gpu_hour_micro=r["price_micro"], runtimes=json.loads(r["runtimes"]),
            gpus=[Gpu(index=g["index"], model=g["model"], memory_mb=g["memory_mb"],
                      busy_job_id=busy.get(g["index"])) for g in json.loads(r["gpus"])],
        ))
    return out


