"""Provider agents: what `python -m worker_gpu` calls as it starts, runs and stops -
registering its provider's GPUs and price, its heartbeats with GPU telemetry, its drain.

Each answers `<payload> | FieldError` (api/errors.py): what the agent can mend (an id,
a bound, a GPU index, a telemetry reading, a node or provider that does not exist) is a
FieldError naming the input field; what is not the caller's (another account's provider
or provider id) stays a GraphQL error, as for every owner's control."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Annotated

import strawberry
from strawberry.scalars import JSON

from api import auth
from api.context import I, run_command, signed_in
from api.errors import FieldError, Refusal, refusable
from api.features.nodes import node_exists
from api.features.providers import Provider, load_providers
from api.scalars import BigInt
from domain.errors import UnknownProvider
from domain.limits import GPU_INDEX, GPU_MEMORY_MB, MAX_PROVIDER_GPUS, PRICE, PROVIDER_GPUS
from domain.node import DEFAULT_NODE
from domain.provider import RUNTIMES, SANDBOXES
from readmodel.telemetry import Heartbeat, TelemetryRefused

PROVIDER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


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
    sandbox: str | None = strawberry.field(
        default=None, description="bwrap, docker or none; an older agent does not say"
    )


@strawberry.type
class HeartbeatReceived:
    provider_id: str


@strawberry.type
class ProviderDrained:
    provider_id: str


RegisterProviderResult = Annotated[Provider | FieldError, strawberry.union(
    "RegisterProviderResult", description="The provider as it is now, or the first thing in "
    "the registration that was refused (an id, a price or a GPU out of bounds, a node that "
    "does not exist)")]
ProviderHeartbeatResult = Annotated[HeartbeatReceived | FieldError, strawberry.union(
    "ProviderHeartbeatResult", description="The heartbeat taken, or why it was refused (a "
    "telemetry reading out of bounds, a provider not registered)")]
DrainProviderResult = Annotated[ProviderDrained | FieldError, strawberry.union(
    "DrainProviderResult", description="The provider offline, or why it was refused (a "
    "provider not registered)")]


def registration_problems(input: RegisterProviderInput) -> list[tuple[str, str]]:
    """What is wrong with a registration, each as (input field, why), in the input's order."""
    problems = []
    if not PROVIDER_ID.match(input.provider_id):
        problems.append(("providerId", "must be 1-63 letters, digits, '.', '_' or '-'"))
    if input.price_per_gpu_hour_micro <= 0:
        problems.append(("pricePerGpuHourMicro", "must be more than 0"))
    elif why := PRICE.problem(input.price_per_gpu_hour_micro):
        problems.append(("pricePerGpuHourMicro", why))
    if not input.gpus:
        problems.append(("gpus", "a provider declares at least one GPU"))
    elif why := PROVIDER_GPUS.problem(len(input.gpus)):
        problems.append(("gpus", why))
    if len({g.index for g in input.gpus}) != len(input.gpus):
        problems.append(("gpus", "two GPUs have the same index"))
    for n, g in enumerate(input.gpus[:MAX_PROVIDER_GPUS]):
        for field, bound, value in ((f"gpus.{n}.index", GPU_INDEX, g.index),
                                    (f"gpus.{n}.memoryMb", GPU_MEMORY_MB, g.memory_mb)):
            if why := bound.problem(value):
                problems.append((field, why))
    if not input.runtimes or not set(input.runtimes) <= set(RUNTIMES):
        problems.append(("runtimes", f"each one of {', '.join(RUNTIMES)}"))
    if input.sandbox is not None and input.sandbox not in SANDBOXES:
        problems.append(("sandbox", f"one of {', '.join(SANDBOXES)}"))
    return problems


@strawberry.type
class AgentMutation:
    @strawberry.mutation(
        description="A provider agent declares its GPUs and price; the provider becomes the "
        "caller's (an agent sends its owner's API key)",
        permission_classes=[auth.ProviderRole],
    )
    @refusable
    async def register_provider(
        self, info: I, input: RegisterProviderInput
    ) -> RegisterProviderResult:
        if problems := registration_problems(input):
            raise Refusal(*problems[0])
        services, caller = info.context.services, signed_in(info)
        network = services.network
        if not await asyncio.to_thread(node_exists, network, input.node):
            raise Refusal("node", f"no node {input.node!r}")
        owner = await asyncio.to_thread(services.identity.owner_of, "provider",
                                        input.provider_id)
        exists = input.provider_id in await asyncio.to_thread(network.provider_ids)
        auth.require(auth.can_claim(caller, "provider", owner, exists),
                     f"providerId: {input.provider_id!r} belongs to another account")
        if owner is None:
            await run_command(services.identity.claim, "provider", input.provider_id,
                              caller.user_id)
            services.auth.forget(user_id=caller.user_id)
        gpus = [{"index": g.index, "model": g.model, "memory_mb": g.memory_mb, "uuid": g.uuid}
                for g in input.gpus]
        await run_command(
            network.register_provider,
            input.provider_id, input.region, input.price_per_gpu_hour_micro, gpus, input.runtimes,
            input.node, input.sandbox,
        )
        await services.heartbeats.submit(Heartbeat(input.provider_id, time.time()))
        deadline = time.monotonic() + 5
        while not (found := await load_providers(services, input.provider_id)):
            if time.monotonic() > deadline:
                raise RuntimeError("the provider was recorded but the read model is not keeping up")
            await asyncio.wait({services.broadcaster.current()}, timeout=0.2)
        return found[0]

    @strawberry.mutation(
        description="A provider agent is alive. Its GPU telemetry is kept as samples (the last "
        "few per provider), not as events; ECC or Xid errors mark a GPU degraded",
        permission_classes=[auth.ProviderRole],
    )
    @refusable
    async def provider_heartbeat(
        self, info: I, provider_id: str, telemetry: JSON | None = None
    ) -> ProviderHeartbeatResult:
        auth.require(await info.context.allowed(auth.can_manage_provider, provider_id),
                     f"forbidden: provider {provider_id!r} is not one of yours")
        try:
            await info.context.services.heartbeat(provider_id, telemetry)
        except TelemetryRefused as err:
            raise Refusal(err.field, err.reason) from None
        return HeartbeatReceived(provider_id=provider_id)

    @strawberry.mutation(
        description="The provider's agent is stopping: it is offline at once (no new work) "
        "until it registers again",
        permission_classes=[auth.ProviderRole],
    )
    @refusable
    async def drain_provider(self, info: I, provider_id: str) -> DrainProviderResult:
        auth.require(await info.context.allowed(auth.can_manage_provider, provider_id),
                     f"forbidden: provider {provider_id!r} is not one of yours")
        network = info.context.services.network
        try:
            await asyncio.to_thread(network.provider_offline, provider_id,
                                    "draining: its agent is stopping")
        except UnknownProvider:
            raise Refusal("providerId", f"no provider {provider_id!r}") from None
        return ProviderDrained(provider_id=provider_id)
