"""Rich renderables for the CLI: tables of jobs, events, providers, objects, and the pipeline."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from client.models import Account, Job, Provider, StoredObject
from client.pipeline import Pipeline, StepState
from client.render import credits, event_summary, human_bytes

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
        facts.add_row("queue position", str(job.queue_position))
    facts.add_row("cost", f"{credits(job.cost_micro)} credits (max {credits(job.max_cost_micro)})")
    facts.add_row("provider", job.provider_id or "-")
    facts.add_row("submitted", short_time(job.submitted_at))
    facts.add_row("updated", short_time(job.updated_at))
    parts: list[RenderableType] = [facts]
    if job.outputs:
        outputs = Table("output", "key", "size", "sha256", box=None, title_justify="left")
        for o in job.outputs:
            outputs.add_row(o.path, o.key, human_bytes(o.size), o.sha256[:16])
        parts += [Text(""), outputs]
    if job.events:
        events = Table("seq", "type", "at", "summary", box=None)
        for e in job.events:
            events.add_row(str(e.seq), e.type, short_time(e.at), event_summary(e))
        parts += [Text(""), events]
    return Group(*parts)


def providers_table(providers: list[Provider]) -> Table:
    table = Table(
        "provider", "region", "status", "gpus", "reputation", "earnings", "heartbeat", box=None
    )
    for p in providers:
        models = sorted({f"{g.model} {g.memory_mb // 1024}GB" for g in p.gpus})
        busy = sum(1 for g in p.gpus if g.busy_job_id)
        gpus = f"{len(p.gpus)} x {', '.join(models)}" if p.gpus else "none"
        if busy:
            gpus += f" ({busy} busy)"
        table.add_row(
            p.provider_id,
            p.region,
            p.status,
            gpus,
            f"{p.reputation:.2f}",
            credits(p.earnings_micro),
            short_time(p.last_heartbeat_at),
        )
    return table


def objects_table(objects: list[StoredObject]) -> Table:
    table = Table("key", "size", "sha256", box=None)
    for o in objects:
        table.add_row(o.key, human_bytes(o.size), o.sha256[:16])
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
