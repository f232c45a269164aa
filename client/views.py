"""Rich renderables for the CLI: tables of jobs, events, providers, objects, and the pipeline."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Group, RenderableType
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from client.models import (
    Account,
    GpuReading,
    Job,
    Node,
    Provider,
    ProviderEarnings,
    QueuedJob,
    StoredObject,
)
from client.pipeline import Pipeline, StepState
from client.render import credits, event_summary, human_bytes
from protocol import digest

_STATE_STYLE = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "REJECTED": "red",
    "QUEUED": "yellow",
    "RUNNING": "cyan",
}
_STEP_ICON = {
    StepState.PENDING: Text("·", style="dim"),
    StepState.DONE: Text("✓", style="green"),
    StepState.FAILED: Text("✗", style="red"),
    StepState.SKIPPED: Text("-", style="dim"),
}


def short_time(at: str | None) -> str:
    """'2025-01-02T03:04:05.678+00:00' -> '2025-01-02 03:04:05'."""
    return "-" if not at else at[:19].replace("T", " ")


def still_ahead(at: str | None, now: datetime | None = None) -> bool:
    """Whether an estimate's time is still to come: one that has passed says nothing."""
    if not at:
        return False
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        return True  # not a time this client reads: show it as the API sent it
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when > (now or datetime.now(UTC))


def state_text(state: str) -> Text:
    return Text(state, style=_STATE_STYLE.get(state, ""))


def jobs_table(jobs: list[Job]) -> Table:
    table = Table("id", "name", "state", "provider", "cost", "submitted", box=None)
    for job in jobs:
        table.add_row(
            Text(job.id, no_wrap=True, overflow="fold"),
            job.name,
            state_text(job.state),
            job.provider_id or "-",
            credits(job.cost_micro),
            short_time(job.submitted_at),
        )
    return table


def job_detail(job: Job) -> RenderableType:
    facts = Table.grid(padding=(0, 2))
    facts.add_row("job", f"{job.id} ({job.name})")
    facts.add_row("state", state_text(job.state))
    if job.reason:
        facts.add_row("reason", job.reason)
    if job.queue_position is not None:
        where = f" in {job.queue}" if job.queue else ""
        facts.add_row("queue position", f"{job.queue_position}{where}")
    if still_ahead(job.expected_start):
        facts.add_row("expected start", f"by {short_time(job.expected_start)} (estimate)")
    for i, why in enumerate(job.waiting_for):
        facts.add_row("waits for" if i == 0 else "", why)
    facts.add_row("cost", f"{credits(job.cost_micro)} credits (max {credits(job.max_cost_micro)})")
    facts.add_row("provider", job.provider_id or "-")
    facts.add_row("submitted", short_time(job.submitted_at))
    facts.add_row("updated", short_time(job.updated_at))
    parts: list[RenderableType] = [facts]
    if job.outputs:
        outputs = Table("output", "key", "size", "digest", box=None, title_justify="left")
        for o in job.outputs:
            outputs.add_row(o.path, o.key, human_bytes(o.size), digest.short(o.digest))
        parts += [Text(""), outputs]
    if job.events:
        events = Table("seq", "type", "at", "summary", box=None)
        for e in job.events:
            events.add_row(str(e.seq), e.type, short_time(e.at), event_summary(e))
        parts += [Text(""), events]
    return Group(*parts)


_GPU_STYLE = {"online": "green", "busy": "cyan", "suspended": "yellow", "degraded": "red",
              "offline": "dim"}


def providers_table(providers: list[Provider]) -> Table:
    table = Table(
        "provider", "region", "status", "gpus", "price/GPU-hour", "reputation", "earnings",
        "heartbeat", box=None,
    )
    for p in providers:
        models = sorted({f"{g.model} {g.memory_mb // 1024}GB" for g in p.gpus})
        gpus = f"{len(p.gpus)} x {', '.join(models)}" if p.gpus else "none"
        states: dict[str, int] = {}
        for g in p.gpus:
            state = g.status or ("busy" if g.busy_job_id else "")
            if state and state not in ("online", "offline"):
                states[state] = states.get(state, 0) + 1
        if states:
            gpus += " (" + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ")"
        table.add_row(
            p.provider_id,
            p.region,
            p.status,
            gpus,
            credits(p.price_per_gpu_hour_micro),
            f"{p.reputation:.2f}",
            credits(p.earnings_micro),
            short_time(p.last_heartbeat_at),
        )
    return table


def _reading(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:g}{unit}"


def provider_detail(p: Provider) -> RenderableType:
    """One provider: its facts, then a line per GPU with its status and latest readings."""
    facts = Table.grid(padding=(0, 2))
    facts.add_row("provider", f"{p.provider_id} ({p.region})")
    status = p.status + (f": {p.status_reason}" if p.status_reason else "")
    facts.add_row("status", status)
    facts.add_row("price", f"{credits(p.price_per_gpu_hour_micro)} credits per GPU-hour")
    facts.add_row("reputation", f"{p.reputation:.2f}")
    facts.add_row("earnings", f"{credits(p.earnings_micro)} credits")
    facts.add_row("heartbeat", short_time(p.last_heartbeat_at))
    latest = {r.index: r for r in p.telemetry[-1].gpus} if p.telemetry else {}
    gpus = Table("gpu", "model", "memory", "status", "job", "util", "mem used", "temp", "power",
                 box=None)
    for g in p.gpus:
        r = latest.get(g.index)
        state = Text(g.status or "-", style=_GPU_STYLE.get(g.status, ""))
        if g.reason:
            state.append(f" ({g.reason})")
        r = r or GpuReading(g.index)
        gpus.add_row(
            str(g.index), g.model, human_bytes(g.memory_mb * 1024 * 1024), state,
            g.busy_job_id or "-",
            _reading(r.utilization_pct, "%"),
            "-" if r.memory_used_mb is None else human_bytes(r.memory_used_mb * 1024 * 1024),
            _reading(r.temperature_c, "°C"), _reading(r.power_w, " W"),
        )
    return Group(facts, Text(""), gpus)


def earnings_view(e: ProviderEarnings) -> RenderableType:
    facts = Table.grid(padding=(0, 2))
    facts.add_row("provider", e.provider_id)
    facts.add_row("balance", f"{credits(e.balance_micro)} credits")
    facts.add_row("earned for verified work", f"{credits(e.verified_micro)} credits")
    facts.add_row("paid in all", f"{credits(e.earned_micro)} credits (also checks, and "
                  "time used by jobs cancelled or failed)")
    facts.add_row("withdrawn", f"{credits(e.withdrawn_micro)} credits")
    if not e.entries:
        return facts
    entries = Table("at", "kind", "amount", "balance", "from/to", "memo", box=None)
    for x in e.entries:
        entries.add_row(short_time(x.at), x.kind, credits(x.amount_micro),
                        credits(x.balance_micro), x.counterparty, x.memo)
    return Group(facts, Text(""), entries)


def queues_table(nodes: list[Node]) -> Table:
    table = Table("queue", "gpu models", "priority levels", "max gpus/client", "order", "waiting",
                  box=None)
    for n in nodes:
        for q in n.queues:
            table.add_row(q.ref, ", ".join(q.gpu_models) or "any", str(q.priority_levels),
                          str(q.max_gpus_per_client or "no cap"),
                          "fair share" if q.fair_share else "first come", str(q.waiting))
    return table


def waiting_table(jobs: list[QueuedJob]) -> Table:
    table = Table("#", "job", "name", "gpus", "priority", "waiting since", "expected start",
                  "waits for", box=None)
    for j in jobs:
        table.add_row(str(j.position), Text(j.job_id, no_wrap=True, overflow="fold"),
                      j.name or "-", str(j.gpus), str(j.priority),
                      short_time(j.waiting_since), short_time(j.expected_start),
                      "; ".join(j.waiting_for) or "-")
    return table


def objects_table(objects: list[StoredObject]) -> Table:
    table = Table("key", "size", "digest", box=None)
    for o in objects:
        table.add_row(o.key, human_bytes(o.size), digest.short(o.digest))
    return table


def account_grid(account: Account) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_row("client", account.client_id)
    grid.add_row("balance", f"{credits(account.balance_micro)} credits")
    grid.add_row("in escrow", f"{credits(account.escrow_micro)} credits")
    return grid


def pipeline_view(job: Job, pipeline: Pipeline) -> RenderableType:
    grid = Table.grid(padding=(0, 1))
    for step in pipeline.steps.values():
        icon: RenderableType = (
            Spinner("dots", style="cyan")
            if step.state == StepState.ACTIVE
            else _STEP_ICON[step.state]
        )
        style = "bold" if step.state == StepState.ACTIVE else ""
        grid.add_row(icon, Text(step.name, style=style), Text(step.detail, style="dim"))
    head = Text.assemble(("job ", "dim"), (job.id, "bold"), (f" ({job.name})", "dim"))
    notes = [Text(f"! {n}", style="yellow") for n in pipeline.notes]
    return Group(head, grid, *notes)
