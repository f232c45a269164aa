"""The market: where a job spec could run now, with a price quote for each offer and the
reason every other provider and GPU of the queue's node cannot take it."""

from __future__ import annotations

import asyncio
from typing import Annotated

import strawberry
from strawberry.scalars import JSON

from api import auth
from api.context import I
from api.errors import FieldError
from api.features.jobs import SpecRejected
from api.jobs import queue_refusal
from api.scalars import BigInt
from api.services import Services
from domain.errors import DomainError
from protocol.money import cost_of_gpu_time
from protocol.spec import JobSpec, SpecError, parse_job_spec
from readmodel.queue import iso_time
from readmodel.telemetry import online_provider_ids


@strawberry.type
class Offer:
    provider_id: str
    gpu_indexes: list[int]
    price_per_gpu_hour_micro: BigInt
    quote_micro: BigInt = strawberry.field(description="the most the job can cost here")
    reputation: float
    expected_start: str = strawberry.field(description="'now': these GPUs are free")
    resting_until: str | None = strawberry.field(
        default=None,
        description="runs were lost with this provider or its owner's others: until then "
        "(ISO time) it is every job's last resort, placed only where no other fits; null "
        "when it does not rest")


@strawberry.type
class Rejection:
    provider_id: str
    reason: str


@strawberry.type
class GpuVerdict:
    """One GPU of the queue's node, judged for the spec: eligible, or why not."""

    provider_id: str
    index: int
    model: str
    memory_mb: int
    eligible: bool
    reason: str = strawberry.field(description="why not (model, memory, price, reputation, "
                                   "region, offline, busy, suspended, degraded); '' if eligible")
    price_per_gpu_hour_micro: BigInt
    score: float = strawberry.field(description="the documented matching score; lower wins")


@strawberry.type
class Explanation:
    eligible: list[Offer]
    rejected: list[Rejection]
    gpus: list[GpuVerdict] = strawberry.field(
        description="every GPU of the queue's node: eligible first (best first), then the "
        "others, each with its reason"
    )
    held_micro: BigInt = strawberry.field(
        description="what submitting it holds from the balance (escrow): the maximum price "
        "for every GPU for the whole timeout, for each run verification may need; the unused "
        "part comes back")
    unsatisfiable: str | None = strawberry.field(
        default=None,
        description="why no provider registered on the queue's node could ever run the spec "
        "(its GPU count, model, memory, region, runtime), whatever they are doing; null when "
        "one could")


ExplainResult = Annotated[Explanation | SpecRejected, strawberry.union("ExplainResult")]


async def explain_spec(services: Services, spec: JobSpec) -> Explanation:
    online = await asyncio.to_thread(online_provider_ids, services.views, services.settings)
    judged = await asyncio.to_thread(services.network.explain, spec, online)
    per_gpu = await asyncio.to_thread(services.network.explain_gpus, spec, online)
    never = None
    if not any(a.eligible for a in judged):
        never = await asyncio.to_thread(services.network.unsatisfiable, spec)
    hours_ms = spec.resources.gpus * spec.timeout_s * 1000
    return Explanation(
        eligible=[
            Offer(
                provider_id=a.provider_id, gpu_indexes=a.gpu_indexes,
                price_per_gpu_hour_micro=BigInt(a.price_per_gpu_hour_micro),
                quote_micro=BigInt(cost_of_gpu_time(hours_ms, a.price_per_gpu_hour_micro)),
                reputation=a.reputation, expected_start="now",
                resting_until=iso_time(a.resting_until) if a.resting_until else None,
            )
            for a in judged if a.eligible
        ],
        rejected=[Rejection(provider_id=a.provider_id, reason=a.reason)
                  for a in judged if not a.eligible],
        gpus=[
            GpuVerdict(
                provider_id=g.provider_id, index=g.index, model=g.model, memory_mb=g.memory_mb,
                eligible=g.eligible, reason=g.reason,
                price_per_gpu_hour_micro=BigInt(g.price_per_gpu_hour_micro), score=g.score,
            )
            for g in per_gpu
        ],
        held_micro=BigInt(spec.max_cost_micro),
        unsatisfiable=never,
    )


@strawberry.type
class MarketQuery:
    @strawberry.field(
        description="Where a job spec could run now, with a price quote, and why not elsewhere",
        permission_classes=[auth.ClientRole],
    )
    async def explain(self, info: I, spec: JSON) -> ExplainResult:
        data = {**spec, "inputs": []} if isinstance(spec, dict) else spec
        try:  # where a job runs does not depend on its inputs
            parsed = parse_job_spec(data)
            return await explain_spec(info.context.services, parsed)
        except SpecError as err:
            return SpecRejected(errors=[FieldError(field=f, message=m) for f, m in err.errors])
        except DomainError as err:
            refusal = queue_refusal(err)
            return SpecRejected(errors=[FieldError(field=f, message=m) for f, m in refusal.errors])
