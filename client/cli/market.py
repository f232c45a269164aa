"""The market: offers and providers, a provider's own controls, a node's queues."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import typer
from rich.table import Table

from client.cli.common import (
    JsonFlag,
    Shown,
    app,
    command,
    connect,
    err,
    node_app,
    out,
    provider_app,
)
from client.errors import BadInput, GpgpuError
from client.models import Provider
from client.render import credits
from client.views import (
    earnings_view,
    provider_detail,
    providers_table,
    queues_table,
    waiting_table,
)

ProviderId = Annotated[str, typer.Argument(metavar="PROVIDER", help="The provider's id.")]
GpuIndex = Annotated[int, typer.Argument(metavar="GPU_INDEX", help="The GPU's index.", min=0)]


def _offers_view(rows: list[dict[str, Any]]) -> None:
    if not rows:
        out().print("no GPU fits these filters now (try --all to see why)")
        return
    table = Table("provider", "gpu", "model", "memory MiB", "price/GPU-hour", "score",
                  "why not", box=None)
    for g in rows:
        table.add_row(g["providerId"], str(g["index"]), g["model"], str(g["memoryMb"]),
                      credits(g["pricePerGpuHourMicro"]), f"{g['score']:.3f}", g["reason"])
    out().print(table)


@command(app, "offers")
def offers(
    ctx: typer.Context,
    gpus: Annotated[int, typer.Option(help="GPUs on one machine.")] = 1,
    model: Annotated[str | None, typer.Option(help="GPU model, e.g. H100.")] = None,
    min_memory_gb: Annotated[int, typer.Option(help="Least GPU memory, GB.")] = 0,
    max_price: Annotated[str, typer.Option(help="Most credits per GPU-hour.")] = "1000000",
    region: Annotated[str | None, typer.Option(help="Only this region.")] = None,
    min_reputation: Annotated[float, typer.Option(help="Least reputation, 0 to 1.")] = 0.0,
    isolation: Annotated[str, typer.Option(
        help="'full': only providers that hold each job in control groups of its own.")] = "any",
    queue: Annotated[str, typer.Option(help="'<node>/<queue>' or a default-node queue.")] = (
        "default"),
    show_all: Annotated[bool, typer.Option("--all", help="Also GPUs that don't fit, and why.")]
    = False,
    as_json: JsonFlag = False,
) -> Shown:
    """Search GPUs that fit these filters now, cheapest and best first (every filter is
    checked exactly as a job spec's; a bad one is an error, never dropped)."""
    resources: dict[str, object] = {"gpus": gpus, "min_gpu_memory_gb": min_memory_gb,
                                    "min_reputation": min_reputation, "isolation": isolation}
    if model is not None:
        resources["gpu_model"] = model
    if region is not None:
        resources["region"] = region
    spec = {"name": "offer-search", "command": ["true"], "max_price_per_gpu_hour": max_price,
            "queue": queue, "resources": resources}
    with connect(ctx) as gp:
        found = gp.explain(spec)
    rows = [g for g in found.get("gpus", []) if show_all or g["eligible"]]
    return Shown(rows, lambda: _offers_view(rows))


def _providers(found: list[Provider]) -> Shown:
    if not found:
        return Shown(found, lambda: err().print("no providers registered yet"))
    return Shown(found, lambda: out().print(providers_table(found)))


@command(app, "providers")
def providers(ctx: typer.Context, as_json: JsonFlag = False) -> Shown:
    """The network's providers, their GPUs, status and reputation."""
    with connect(ctx) as gp:
        return _providers(gp.providers())


# -- providers' own controls ------------------------------------------------


@command(provider_app, "status")
def provider_status(
    ctx: typer.Context,
    provider_id: Annotated[
        str | None, typer.Argument(metavar="[PROVIDER]", help="One provider in detail.")
    ] = None,
    samples: Annotated[int, typer.Option(help="Telemetry samples to include (--json).")] = 1,
    as_json: JsonFlag = False,
) -> Shown:
    """Each GPU's status (online, busy, suspended, degraded, offline), price, last heartbeat."""
    with connect(ctx) as gp:
        if provider_id is None:
            return _providers(gp.providers())
        provider = gp.provider(provider_id, samples=max(1, samples))
    return Shown(provider, lambda: out().print(provider_detail(provider)))


@command(provider_app, "earnings")
def provider_earnings(
    ctx: typer.Context,
    provider_id: ProviderId,
    limit: Annotated[int, typer.Option(help="How many ledger entries, newest first.")] = 20,
    as_json: JsonFlag = False,
) -> Shown:
    """What the provider earned for verified work, its balance, and its ledger entries."""
    with connect(ctx) as gp:
        earnings = gp.provider_earnings(provider_id, limit)
    return Shown(earnings, lambda: out().print(earnings_view(earnings)))


def _gpu_shown(provider_id: str, index: int, provider: Provider) -> Shown:
    gpu = next((g for g in provider.gpus if g.index == index), None)
    line = f"GPU {index} of {provider_id}: {gpu.status if gpu is not None else '?'}"
    return Shown(provider, lambda: out().print(line))


@command(provider_app, "suspend")
def provider_suspend(
    ctx: typer.Context, provider_id: ProviderId, index: GpuIndex, as_json: JsonFlag = False
) -> Shown:
    """Take a GPU out of service: it gets no new work; a job running on it finishes."""
    with connect(ctx) as gp:
        return _gpu_shown(provider_id, index, gp.suspend_gpu(provider_id, index))


@command(provider_app, "resume")
def provider_resume(
    ctx: typer.Context, provider_id: ProviderId, index: GpuIndex, as_json: JsonFlag = False
) -> Shown:
    """Put a suspended GPU back in service."""
    with connect(ctx) as gp:
        return _gpu_shown(provider_id, index, gp.resume_gpu(provider_id, index))


@command(provider_app, "price")
def provider_price(
    ctx: typer.Context,
    provider_id: ProviderId,
    price: Annotated[str, typer.Argument(metavar="CREDITS", help="Per GPU-hour, e.g. 2.5")],
    as_json: JsonFlag = False,
) -> Shown:
    """Set the price per GPU-hour: jobs placed from now pay it; running ones keep theirs."""
    with connect(ctx) as gp:
        provider = gp.set_price(provider_id, price)
    line = (f"{provider_id}: {credits(provider.price_per_gpu_hour_micro)} credits "
            "per GPU-hour for new jobs")
    return Shown(provider, lambda: out().print(line))


# -- nodes and queues --------------------------------------------------------


@command(node_app, "queues")
def node_queues(
    ctx: typer.Context,
    node_id: Annotated[str | None, typer.Argument(metavar="[NODE]", help="Only this node.")] = None,
    as_json: JsonFlag = False,
) -> Shown:
    """Every queue: the GPU models it serves, priority levels, per-client cap, order, waiting."""
    with connect(ctx) as gp:
        nodes = [n for n in gp.nodes() if node_id is None or n.node_id == node_id]
    if node_id is not None and not nodes:
        raise GpgpuError(f"node {node_id} not found")
    return Shown([q for n in nodes for q in n.queues], lambda: out().print(queues_table(nodes)))


@command(node_app, "configure-queue")
def node_configure_queue(
    ctx: typer.Context,
    node_id: Annotated[str, typer.Argument(metavar="NODE")],
    name: Annotated[str, typer.Argument(metavar="QUEUE")],
    gpu_model: Annotated[
        list[str] | None,
        typer.Option("--gpu-model", help="A GPU model it serves (repeat for more).")
    ] = None,
    any_model: Annotated[
        bool, typer.Option("--any-model", help="Serve every GPU model.")
    ] = False,
    priority_levels: Annotated[
        int | None, typer.Option(help="Priorities 0 .. levels-1 a job may ask for (1-10).")
    ] = None,
    max_gpus_per_client: Annotated[
        int | None, typer.Option(help="GPUs one client may hold at once (0: no cap).")
    ] = None,
    fair_share: Annotated[
        bool | None,
        typer.Option("--fair-share/--first-come",
                     help="Share GPUs fairly between waiting clients, or first come first served."),
    ] = None,
) -> Shown:
    """Create a queue or change it; what is not given stays as it is (or its default)."""
    if gpu_model and any_model:
        raise BadInput("--gpu-model and --any-model: give one or the other")
    with connect(ctx) as gp:
        current = next((q for n in gp.nodes() if n.node_id == node_id for q in n.queues
                        if q.name == name), None)
        models = [] if any_model else list(gpu_model or (current.gpu_models if current else []))
        gp.configure_queue(
            node_id, name, models,
            priority_levels if priority_levels is not None
            else (current.priority_levels if current else 1),
            max_gpus_per_client if max_gpus_per_client is not None
            else (current.max_gpus_per_client if current else 0),
            fair_share if fair_share is not None else (current.fair_share if current else True),
        )
        nodes = [dataclasses.replace(n, queues=[q for q in n.queues if q.name == name])
                 for n in gp.nodes() if n.node_id == node_id]
    return Shown([q for n in nodes for q in n.queues], lambda: out().print(queues_table(nodes)))


@command(node_app, "waiting")
def node_waiting(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(metavar="[QUEUE]", help="<node>/<queue>")] = (
        "local/default"
    ),
    limit: Annotated[int, typer.Option(help="How many, from the front.")] = 100,
    as_json: JsonFlag = False,
) -> Shown:
    """A queue's waiting jobs in the order they will be placed, with expected starts."""
    with connect(ctx) as gp:
        jobs = gp.queue(queue, limit)
    if not jobs:
        return Shown(jobs, lambda: err().print(f"nobody waits in {queue}"))
    return Shown(jobs, lambda: out().print(waiting_table(jobs)))
