"""Providers: the market's catalogue of GPUs (status, price, reputation, telemetry), its
owner's controls (GPUs in or out of service, the price), and its events live. What a
provider's agent calls (registration, heartbeats, drain) is api/features/agents.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Annotated, Any

import strawberry
from strawberry.scalars import JSON

from api import auth, multiplex
from api.context import I, bounded, run_command
from api.errors import FieldError, Refusal, refusable
from api.scalars import BigInt
from api.services import Services
from api.streams import check_after, live_rows
from domain.limits import GPU_INDEX
from domain.provider import gpu_status
from domain.reputation import OUTVOTED_MIN_SPENT_MICRO, OUTVOTED_SCORED, Reputation, reputation
from protocol.money import micro_to_credits, price_to_micro
from readmodel.queue import iso_time
from readmodel.telemetry import recent_samples


@strawberry.type
class Gpu:
    index: int
    model: str
    memory_mb: int
    busy_job_id: str | None = strawberry.field(
        description="the job holding it; null unless the provider is yours or on your node"
    )
    status: str = strawberry.field(
        description="online (free), busy, suspended, degraded or offline (the provider is)"
    )
    reason: str = strawberry.field(description="why degraded (ECC, Xid errors) or offline")


@strawberry.type
class GpuReading:
    index: int
    utilization_pct: int | None
    memory_used_mb: int | None
    temperature_c: int | None
    power_w: float | None
    ecc_errors: int | None
    xid_errors: int | None


@strawberry.type
class TelemetrySample:
    at: str
    gpus: list[GpuReading]


@strawberry.type
class ReputationDetail:
    """What a provider's score is made of (domain/reputation.py documents the formula)."""

    score: float
    confidence: float = strawberry.field(description="grows with (recent) history, 0 to 1")
    probation: bool = strawberry.field(
        description="fewer than 5 outcomes: every result checked (as are the next ones after "
        "an outvoted run)")
    outcomes: int = strawberry.field(
        description="scored outcomes (an `outvoted` only where it counts), all time")
    effective_outcomes: float = strawberry.field(description="outcomes weighted by age")
    successes: float
    failures: float
    timeouts: float
    lost: float
    mismatches: float
    outvoted: float = strawberry.field(
        description="runs a majority of other owners disagreed with: each puts the provider "
        "back on probation, its next results all checked; in the score only as "
        "`outvotedScored` (the client's command may have chosen the answer)")
    outvoted_scored: float = strawberry.field(
        description="the outvoted runs the score counts, each as a failure: only once the "
        "jobs of 3 distinct clients, each of which had paid for at least "
        f"{micro_to_credits(OUTVOTED_MIN_SPENT_MICRO)} credits of verified work for each "
        "outvoted run its jobs had caused before and one more, outvoted the provider within "
        "30 days, and at most one a client in 30 days (domain/reputation.py)")


@strawberry.type
class Provider:
    provider_id: str
    region: str
    status: str = strawberry.field(description="online, busy, offline or lost")
    status_reason: str
    last_heartbeat_at: str | None
    reputation: float = strawberry.field(description="the score now; old outcomes weigh less")
    reputation_detail: ReputationDetail
    earnings_micro: BigInt | None = strawberry.field(
        description="the provider account's balance; null unless the provider is yours"
    )
    price_per_gpu_hour_micro: BigInt
    price_per_gpu_hour: str = strawberry.field(description="credits, e.g. '2.5'")
    runtimes: list[str]
    sandbox: str = strawberry.field(
        description="how its agent isolates jobs: bwrap (each job's memory, processes and "
        "CPU limited as a whole), bwrap-rlimits (bubblewrap, but no control groups: each "
        "process limited alone), docker, or none (started with --unsafe-no-sandbox: a job "
        "there can read the machine's files); empty if not told"
    )
    gpus: list[Gpu]
    # Its owner, its node's operator and admins see its telemetry and which job holds a GPU.
    watched: strawberry.Private[bool] = True

    @strawberry.field(
        description="The last heartbeats' GPU readings, oldest first; empty unless the "
        "provider is yours or on your node"
    )
    async def telemetry(self, info: I, limit: int = 120) -> list[TelemetrySample]:
        if not self.watched:
            return []
        services = info.context.services
        samples = await asyncio.to_thread(
            recent_samples, services.views, self.provider_id, max(1, limit)
        )
        return [
            TelemetrySample(at=iso_time(s.at), gpus=[GpuReading(**vars(r)) for r in s.readings])
            for s in samples
        ]


@strawberry.type
class ProviderEvent:
    seq: int
    provider_id: str
    type: str
    at: str
    data: JSON


async def shown_providers(info: I, providers: list[Provider]) -> list[Provider]:
    """Providers as this caller may see them: the market's catalogue for everyone signed
    in; earnings for the owner; telemetry and who holds each GPU for the owner and the
    operators of its nodes (auth.can_manage_provider, auth.can_watch_provider)."""
    caller = info.context.caller
    nodes = await info.context.provider_nodes()
    out = []
    for p in providers:
        if auth.can_manage_provider(caller, p.provider_id):
            out.append(p)
            continue
        watched = auth.can_watch_provider(caller, p.provider_id, nodes.get(p.provider_id, set()))
        gpus = p.gpus if watched else [replace(g, busy_job_id=None) for g in p.gpus]
        out.append(replace(p, earnings_micro=None, gpus=gpus, watched=watched))
    return out


async def load_providers(services: Services, provider_id: str | None = None) -> list[Provider]:
    where, params = ("WHERE p.provider_id = ?", (provider_id,)) if provider_id else ("", ())
    rows = await services.query(
        "SELECT p.*, l.last_heartbeat_at, a.balance_micro FROM providers p"
        " LEFT JOIN provider_liveness l ON l.provider_id = p.provider_id"
        " LEFT JOIN accounts a ON a.name = 'provider:' || p.provider_id"
        f" {where} ORDER BY p.provider_id",
        params,
    )
    # Scoring every provider's reputation is CPU work that grows with the fleet (1,400
    # providers: seconds): in a thread, so the event loop answers everyone else meanwhile.
    return await asyncio.to_thread(_providers_of, rows, services.settings.offline_after_s)


def _providers_of(rows: list[dict[str, Any]], offline_after_s: float) -> list[Provider]:
    cutoff = time.time() - offline_after_s
    out = []
    for r in rows:
        rep = reputation(list(zip(json.loads(r["outcomes"]), json.loads(r["outcome_times"]),
                                  strict=True)), time.time(), json.loads(r["outcome_clients"]),
                         json.loads(r["outcome_spent"]), json.loads(r["outcome_outvotes"]))
        busy = {i: job for job, idx in json.loads(r["reservations"]).items() for i in idx}
        beat = r["last_heartbeat_at"]
        status, reason = r["status"], r["status_reason"]
        if status == "online" and (beat is None or beat < cutoff):
            status, reason = "offline", "no recent heartbeat"
        online = status == "online"
        if online and busy:
            status = "busy"
        suspended, degraded = set(json.loads(r["suspended"])), json.loads(r["degraded"])
        gpus = []
        for g in json.loads(r["gpus"]):
            state, why = gpu_status(online, g["index"], suspended, degraded, busy)
            gpus.append(Gpu(index=g["index"], model=g["model"], memory_mb=g["memory_mb"],
                            busy_job_id=busy.get(g["index"]), status=state,
                            reason=why or (reason if state == "offline" else "")))
        out.append(Provider(
            provider_id=r["provider_id"], region=r["region"], status=status,
            status_reason=reason,
            last_heartbeat_at=None if beat is None else iso_time(beat),
            reputation=rep.score, reputation_detail=_detail(rep),
            earnings_micro=BigInt(r["balance_micro"] or 0),
            price_per_gpu_hour_micro=r["price_micro"],
            price_per_gpu_hour=micro_to_credits(r["price_micro"]),
            runtimes=json.loads(r["runtimes"]), sandbox=r["sandbox"], gpus=gpus,
        ))
    return out


def _detail(rep: Reputation) -> ReputationDetail:
    w = rep.weighted
    return ReputationDetail(
        score=rep.score, confidence=rep.confidence, probation=rep.probation,
        outcomes=rep.outcomes, effective_outcomes=rep.effective_outcomes,
        successes=w["success"], failures=w["failure"], timeouts=w["timeout"], lost=w["lost"],
        mismatches=w["mismatch"], outvoted=w["outvoted"], outvoted_scored=w[OUTVOTED_SCORED],
    )


async def own_provider(info: I, provider_id: str) -> None:
    """The provider exists (for an admin) and is the caller's own; refused otherwise."""
    caller = info.context.caller
    if caller is not None and caller.admin:
        if not await load_providers(info.context.services, provider_id):
            raise Refusal("providerId", f"no provider {provider_id!r}")
        return
    auth.require(await info.context.allowed(auth.can_manage_provider, provider_id),
                 f"forbidden: provider {provider_id!r} is not one of yours")


async def _provider_control(info: I, provider_id: str, command: str, arg: int) -> Provider:
    """Run one of a provider's own controls and answer with the provider as it is now."""
    await own_provider(info, provider_id)
    services = info.context.services
    if not await load_providers(services, provider_id):
        raise Refusal("providerId", f"no provider {provider_id!r}")
    await run_command(getattr(services.network, command), provider_id, arg)
    await services.projected()
    return (await load_providers(services, provider_id))[0]


ProviderResult = Annotated[Provider | FieldError, strawberry.union(
    "ProviderResult", description="The provider as it is now, or why the change was refused")]


def _provider_event(row: dict[str, Any]) -> ProviderEvent:
    return ProviderEvent(seq=row["seq"], provider_id=row["provider_id"], type=row["type"],
                         at=row["at"], data=json.loads(row["data"]))


@strawberry.type
class ProviderQuery:
    @strawberry.field(
        description="The market: every provider's GPUs, status, price and reputation (earnings, "
        "telemetry and which job holds a GPU only for your own)",
        permission_classes=[auth.SignedIn],
    )
    async def providers(self, info: I) -> list[Provider]:
        return await shown_providers(info, await load_providers(info.context.services))

    @strawberry.field(permission_classes=[auth.SignedIn])
    async def provider(self, info: I, provider_id: str) -> Provider | None:
        found = await load_providers(info.context.services, provider_id)
        return (await shown_providers(info, found))[0] if found else None


@strawberry.type
class ProviderMutation:
    @strawberry.mutation(
        description="Take one GPU out of service: it gets no new work; a job on it finishes",
        permission_classes=[auth.ProviderRole],
    )
    @refusable
    async def suspend_gpu(self, info: I, provider_id: str, index: int) -> ProviderResult:
        bounded("index", GPU_INDEX, index)
        return await _provider_control(info, provider_id, "suspend_gpu", index)

    @strawberry.mutation(description="Put a suspended GPU back in service",
                         permission_classes=[auth.ProviderRole])
    @refusable
    async def resume_gpu(self, info: I, provider_id: str, index: int) -> ProviderResult:
        bounded("index", GPU_INDEX, index)
        return await _provider_control(info, provider_id, "resume_gpu", index)

    @strawberry.mutation(
        description="A provider's new price in credits per GPU-hour (e.g. '2.5'): new jobs "
        "pay it; running ones keep the price they were allocated at",
        permission_classes=[auth.ProviderRole],
    )
    @refusable
    async def set_price(
        self, info: I, provider_id: str, price_per_gpu_hour: str
    ) -> ProviderResult:
        await own_provider(info, provider_id)
        try:
            micro = price_to_micro(price_per_gpu_hour)
        except ValueError as err:
            raise Refusal("pricePerGpuHour", str(err)) from None
        return await _provider_control(info, provider_id, "set_price", micro)


@strawberry.type
class ProviderSubscription:
    @strawberry.subscription(
        description="A provider's status changes, reservations and reputation, after `after` "
        "(its owner and the operators of its nodes)",
        permission_classes=[auth.SignedIn],
    )
    async def provider_events(
        self, info: I, provider_id: str, after: int = 0
    ) -> AsyncGenerator[ProviderEvent, None]:
        services = info.context.services
        nodes = (await info.context.provider_nodes()).get(provider_id, set())
        if not auth.can_watch_provider(info.context.caller, provider_id, nodes):
            raise auth.Denied(f"forbidden: provider {provider_id!r} is not yours or on your node")
        if not await load_providers(services, provider_id):
            raise ValueError(f"providerId: no provider {provider_id!r}")
        check_after(after)
        source = multiplex.Source("provider", provider_id, _provider_event)
        with services.subscription_of(info.context.caller):
            async for event in live_rows(info, source, after):
                yield event
