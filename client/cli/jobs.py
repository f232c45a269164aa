"""`gpgpu job ...`: submit, list, show, explain, logs, cancel, outputs."""

from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import typer
from rich.table import Table

from client._http import bind_progress
from client.cli.common import (
    JsonFlag,
    Shown,
    command,
    connect,
    err,
    fail,
    job_app,
    out,
    transfers,
)
from client.errors import GpgpuError
from client.models import Job
from client.render import credits
from client.views import job_detail, jobs_table, state_text

SpecFile = Annotated[Path, typer.Argument(help="The job spec file (YAML).")]


@command(job_app, "submit")
def job_submit(
    ctx: typer.Context,
    spec: SpecFile,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job to its end.")] = False,
    as_json: JsonFlag = False,
) -> Shown:
    """Upload a spec's local inputs, submit the job, print its id."""
    from client.watch import follow_job

    live = not as_json  # progress bars and the live pipeline view are for people
    with connect(ctx) as gp:
        with transfers(enabled=live) as report:
            job = gp.submit_spec_file(spec, progress=report)
        if live:
            for warning in job.warnings:
                err().print(f"warning: {warning}", markup=False, highlight=False)
        if not wait:
            return Shown(job, lambda: typer.echo(job.id))
        if live:
            err().print(f"submitted job [bold]{job.id}[/] ({job.name})")
        try:
            final, _ = follow_job(gp, job, err() if live else None)
        except KeyboardInterrupt:
            fail(f"stopped following; job {job.id} goes on: gpgpu job show {job.id}", 130)
    return Shown(final, lambda: _print_outcome(final),
                 code=0 if final.state == "SUCCEEDED" else 1)


def _print_outcome(job: Job) -> None:
    console = out()
    headline = state_text(job.state)
    if job.reason:
        headline.append(f": {job.reason}")
    console.print(headline)
    console.print(f"cost      {credits(job.cost_micro)} credits "
                  f"(max {credits(job.max_cost_micro)})")
    console.print(f"provider  {job.provider_id or '-'}")
    for i, o in enumerate(job.outputs):
        console.print(f"{'outputs' if i == 0 else '':<9} {o.key}")
    if job.outputs:
        console.print(f"download  gpgpu job outputs {job.id} DIR", markup=False)


@command(job_app, "list")
def job_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="How many jobs, newest first.")] = 50,
    as_json: JsonFlag = False,
) -> Shown:
    """Your jobs: id, name, state, provider, cost, submitted."""
    with connect(ctx) as gp:
        jobs = gp.jobs(limit)
    if not jobs:
        return Shown(jobs, lambda: err().print("no jobs yet: gpgpu job submit SPEC"))
    return Shown(jobs, lambda: out().print(jobs_table(jobs)))


@command(job_app, "show")
def job_show(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> Shown:
    """A job's state, cost, provider, outputs and event history."""
    with connect(ctx) as gp:
        job = gp.job(job_id)
    return Shown(job, lambda: out().print(job_detail(job)))


def _explanation_view(found: dict[str, Any]) -> None:
    table = Table("provider", "gpus", "price/GPU-hour", "quote (max)", "reputation", "start",
                  box=None)
    for o in found["eligible"]:
        table.add_row(o["providerId"], ",".join(map(str, o["gpuIndexes"])),
                      credits(o["pricePerGpuHourMicro"]), credits(o["quoteMicro"]),
                      f"{o['reputation']:.2f}", o["expectedStart"])
    console = out()
    if found["eligible"]:
        console.print(table)
    else:
        console.print("no provider can take this job now")
    for r in found["rejected"]:
        console.print(f"  {r['providerId']}: {r['reason']}")


@command(job_app, "explain")
def job_explain(ctx: typer.Context, spec: SpecFile, as_json: JsonFlag = False) -> Shown:
    """Before submitting: where the job could run now, its price, and why not elsewhere."""
    with connect(ctx) as gp:
        found = gp.explain_spec_file(spec)
    return Shown(found, lambda: _explanation_view(found))


def _logs_view(job: Job) -> None:
    console = out()
    runs = [e for e in job.events if e.type == "ExecutionFinished"]
    if not runs:
        console.print(f"job {job.id} has not finished a run yet (it is {job.state})")
        return
    for e in runs:
        head = f"--- run {e.data.get('attempt', '?')} on {e.data.get('provider_id', '?')}"
        head += f", exit {e.data.get('exit_code')}"
        console.print(head + " ---", markup=False, highlight=False)
        console.print(str(e.data.get("log_tail", "")).rstrip("\n"), markup=False,
                      highlight=False)


@command(job_app, "logs")
def job_logs(
    ctx: typer.Context,
    job_id: str,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Print the output live as the job's runs print it, until the "
        "job ends.")] = False,
) -> Shown | None:
    """The job's output (the tail each run reported), run by run; --follow: live."""
    if follow:
        _follow_log(ctx, job_id)
        return None
    with connect(ctx) as gp:
        job = gp.job(job_id)
    return Shown(job, lambda: _logs_view(job))


def _follow_log(ctx: typer.Context, job_id: str) -> None:
    """Output on stdout as it comes; which run, gaps and the end on stderr."""
    attempt = None
    with connect(ctx) as gp:
        for chunk in gp.follow_log(job_id):
            if chunk.attempt != attempt:
                attempt = chunk.attempt
                sys.stderr.write(f"--- run {attempt} on {chunk.provider_id} ---\n")
            if chunk.skipped_bytes:
                sys.stderr.write(f"--- {chunk.skipped_bytes} bytes of output not kept ---\n")
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
        state = gp.job(job_id).state
    sys.stderr.write(f"--- job {job_id} ended: {state} ---\n")


@command(job_app, "cancel")
def job_cancel(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> Shown:
    """Stop a job: it pays for the GPU time used and the rest of its escrow is refunded."""
    with connect(ctx) as gp:
        job = gp.cancel_job(job_id)
    return Shown(job, lambda: out().print(
        f"cancelling job {job_id} (it was {job.state}); see `gpgpu job show {job_id}`"))


@command(job_app, "outputs")
def job_outputs(
    ctx: typer.Context,
    job_id: str,
    dest: Annotated[Path, typer.Argument(metavar="DIR", help="Where to put them.")],
) -> Shown:
    """Download every output of a job to DIR/<path>, verifying each digest."""
    with connect(ctx) as gp:
        job = gp.job(job_id)
        if not job.outputs:
            note = "" if job.terminal else f" yet (it is {job.state})"
            return Shown([], lambda: err().print(f"job {job_id} has no outputs{note}"))
        with transfers() as report:
            for o in job.outputs:
                target = dest / _safe_relative(o.path)
                gp.download(o.key, target, bind_progress(report, o.key), o.digest)
    written = [str(dest / o.path) for o in job.outputs]
    return Shown(written, lambda: typer.echo("\n".join(written)))


def _safe_relative(path: str) -> Path:
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or ".." in parts:
        raise GpgpuError(f"output path {path!r} would land outside the folder; not writing it")
    return Path(*parts)
