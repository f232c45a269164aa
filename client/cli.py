"""The `gpgpu` command line: jobs, storage, account, providers, and `gpgpu up`.

Results go to stdout (one JSON document with --json); progress, live views and
errors go to stderr. An expected error is one line, `error: ...`, and exit code 2
for bad input, 1 for anything else.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from client._http import FileProgress, bind_progress
from client.errors import BadInput, GpgpuError
from client.models import Job
from client.render import credits
from client.sdk import GpgpuClient
from client.views import (
    account_grid,
    job_detail,
    jobs_table,
    objects_table,
    providers_table,
    state_text,
)
from domain.money import micro_to_credits

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    help="GPGPU: hire GPUs, run jobs on your data, get verified results.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
job_app = typer.Typer(help="Submit and inspect jobs.", no_args_is_help=True)
storage_app = typer.Typer(help="Your storage space: put, get, ls, rm.", no_args_is_help=True)
app.add_typer(job_app, name="job")
app.add_typer(storage_app, name="storage")
admin_app = typer.Typer(
    help="Operator commands on this node's stores (GPGPU_HOME / GPGPU_EVENT_STORE).",
    no_args_is_help=True,
)
app.add_typer(admin_app, name="admin")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


@dataclasses.dataclass
class Target:
    api: str | None = None
    client: str | None = None


def fails_cleanly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn expected errors into one line on stderr and an exit code; bugs still trace."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except BadInput as err:
            _fail(str(err), 2)
        except GpgpuError as err:
            _fail(str(err), 1)
        except OSError as err:
            where = f"{err.filename}: " if err.filename else ""
            _fail(f"{where}{err.strerror or err}", 1)
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    return wrapper


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.callback()
def _options(
    ctx: typer.Context,
    api: Annotated[
        str | None, typer.Option("--api", help="API URL (env GPGPU_API_URL).", metavar="URL")
    ] = None,
    client: Annotated[
        str | None,
        typer.Option("--client", help="Your client id (env GPGPU_CLIENT).", metavar="ID"),
    ] = None,
) -> None:
    ctx.obj = Target(api, client)


@contextmanager
def _client(ctx: typer.Context) -> Iterator[GpgpuClient]:
    target = ctx.find_object(Target) or Target()
    with GpgpuClient(target.api, target.client) as gp:
        yield gp


def _out() -> Console:
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(_plain(value), indent=2))


@contextmanager
def _transfers(enabled: bool = True) -> Iterator[FileProgress]:
    """Progress bars on stderr, one per key, fed by the SDK's (key, done, total) callback.

    Started on the first report, so that a command that fails before any transfer
    leaves stderr to its one error line.
    """
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_err(),
        disable=not enabled,
    )
    tasks: dict[str, TaskID] = {}

    def report(key: str, done: int, total: int | None) -> None:
        if not tasks:
            progress.start()
        if key not in tasks:
            tasks[key] = progress.add_task(key, total=total)
        progress.update(tasks[key], completed=done, total=total)

    try:
        yield report
    finally:
        if tasks:
            progress.stop()


# -- jobs -----------------------------------------------------------------


@job_app.command("submit")
@fails_cleanly
def job_submit(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Argument(help="The job spec file (YAML).")],
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job to its end.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Upload a spec's local inputs, submit the job, print its id."""
    from client.watch import follow_job

    with _client(ctx) as gp:
        with _transfers(enabled=not as_json) as report:
            job = gp.submit_spec_file(spec, progress=report)
        if not wait:
            if as_json:
                _print_json(job)
            else:
                typer.echo(job.id)
            return
        if not as_json:
            _err().print(f"submitted job [bold]{job.id}[/] ({job.name})")
        try:
            final, _ = follow_job(gp, job, None if as_json else _err())
        except KeyboardInterrupt:
            _fail(f"stopped following; job {job.id} goes on: gpgpu job show {job.id}", 130)
    if as_json:
        _print_json(final)
    else:
        _print_outcome(final)
    raise typer.Exit(0 if final.state == "SUCCEEDED" else 1)


def _print_outcome(job: Job) -> None:
    out = _out()
    headline = state_text(job.state)
    if job.reason:
        headline.append(f": {job.reason}")
    out.print(headline)
    out.print(f"cost      {credits(job.cost_micro)} credits (max {credits(job.max_cost_micro)})")
    out.print(f"provider  {job.provider_id or '-'}")
    for i, o in enumerate(job.outputs):
        out.print(f"{'outputs' if i == 0 else '':<9} {o.key}")
    if job.outputs:
        out.print(f"download  gpgpu job outputs {job.id} DIR", markup=False)


@job_app.command("list")
@fails_cleanly
def job_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="How many jobs, newest first.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Your jobs: id, name, state, provider, cost, submitted."""
    with _client(ctx) as gp:
        jobs = gp.jobs(limit)
    if as_json:
        _print_json(jobs)
    elif not jobs:
        _err().print("no jobs yet: gpgpu job submit SPEC")
    else:
        _out().print(jobs_table(jobs))


@job_app.command("show")
@fails_cleanly
def job_show(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """A job's state, cost, provider, outputs and event history."""
    with _client(ctx) as gp:
        job = gp.job(job_id)
    if as_json:
        _print_json(job)
    else:
        _out().print(job_detail(job))


@job_app.command("explain")
@fails_cleanly
def job_explain(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Argument(help="The job spec file (YAML).")],
    as_json: JsonFlag = False,
) -> None:
    """Before submitting: where the job could run now, its price, and why not elsewhere."""
    with _client(ctx) as gp:
        found = gp.explain_spec_file(spec)
    if as_json:
        _print_json(found)
        return
    table = Table("provider", "gpus", "price/GPU-hour", "quote (max)", "reputation", "start",
                  box=None)
    for o in found["eligible"]:
        table.add_row(o["providerId"], ",".join(map(str, o["gpuIndexes"])),
                      micro_to_credits(o["pricePerGpuHourMicro"]),
                      micro_to_credits(o["quoteMicro"]), f"{o['reputation']:.2f}",
                      o["expectedStart"])
    out = _out()
    if found["eligible"]:
        out.print(table)
    else:
        out.print("no provider can take this job now")
    for r in found["rejected"]:
        out.print(f"  {r['providerId']}: {r['reason']}")


@job_app.command("cancel")
@fails_cleanly
def job_cancel(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """Stop a job: it pays for the GPU time used and the rest of its escrow is refunded."""
    with _client(ctx) as gp:
        job = gp.cancel_job(job_id)
    if as_json:
        _print_json(job)
    else:
        _out().print(f"cancelling job {job_id} (it was {job.state}); "
                     f"see `gpgpu job show {job_id}`")


@job_app.command("outputs")
@fails_cleanly
def job_outputs(
    ctx: typer.Context,
    job_id: str,
    dest: Annotated[Path, typer.Argument(metavar="DIR", help="Where to put them.")],
) -> None:
    """Download every output of a job to DIR/<path>, verifying each sha256."""
    with _client(ctx) as gp:
        job = gp.job(job_id)
        if not job.outputs:
            note = "" if job.terminal else f" yet (it is {job.state})"
            _err().print(f"job {job_id} has no outputs{note}")
            return
        with _transfers() as report:
            for o in job.outputs:
                target = dest / _safe_relative(o.path)
                gp.download(o.key, target, bind_progress(report, o.key), o.sha256)
    for o in job.outputs:
        typer.echo(str(dest / o.path))


def _safe_relative(path: str) -> Path:
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or ".." in parts:
        raise GpgpuError(f"output path {path!r} would land outside the folder; not writing it")
    return Path(*parts)


# -- storage --------------------------------------------------------------


@storage_app.command("put")
@fails_cleanly
def storage_put(ctx: typer.Context, local: Path, key: str) -> None:
    """Upload a local file to KEY in your storage space."""
    if not local.is_file():
        raise BadInput(f"{local}: no such file")
    with _client(ctx) as gp, _transfers() as report:
        obj = gp.upload(local, key, bind_progress(report, key))
    typer.echo(f"{obj.key}  {obj.size} bytes  sha256 {obj.sha256}")


@storage_app.command("get")
@fails_cleanly
def storage_get(ctx: typer.Context, key: str, local: Path) -> None:
    """Download KEY to LOCAL (a file, or a folder to put it in), verifying its sha256."""
    dest = local / PurePosixPath(key).name if local.is_dir() else local
    with _client(ctx) as gp, _transfers() as report:
        gp.download(key, dest, bind_progress(report, key))
    typer.echo(str(dest))


@storage_app.command("ls")
@fails_cleanly
def storage_ls(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(help="Only keys that start with this.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """List the objects in your storage space under PREFIX."""
    with _client(ctx) as gp:
        objects = gp.list_objects(prefix)
    if as_json:
        _print_json(objects)
    elif not objects:
        _err().print(f"nothing stored under {prefix!r}" if prefix else "your storage is empty")
    else:
        _out().print(objects_table(objects))


@storage_app.command("rm")
@fails_cleanly
def storage_rm(ctx: typer.Context, key: str) -> None:
    """Delete KEY from your storage space."""
    with _client(ctx) as gp:
        gp.delete(key)
    typer.echo(f"deleted {key}")


# -- account, providers, dev stack -----------------------------------------


@app.command("account")
@fails_cleanly
def account(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Your balance and what is held in escrow for running jobs."""
    with _client(ctx) as gp:
        acct = gp.account()
    if as_json:
        _print_json(acct)
    else:
        _out().print(account_grid(acct))


@app.command("providers")
@fails_cleanly
def providers(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The network's providers, their GPUs, status and reputation."""
    with _client(ctx) as gp:
        found = gp.providers()
    if as_json:
        _print_json(found)
    elif not found:
        _err().print("no providers registered yet")
    else:
        _out().print(providers_table(found))


@app.command("up")
def up() -> None:
    """Start the embedded network here: Temporal, the API, the control worker, two providers."""
    try:
        devstack = importlib.import_module("infra.devstack")
    except ModuleNotFoundError as err:
        if err.name not in ("infra", "infra.devstack"):
            raise
        _fail("the dev stack launcher (infra/devstack.py) is not in this installation", 1)
    code = devstack.main()
    raise typer.Exit(code if isinstance(code, int) else 0)


@admin_app.command("rebuild-projections")
def admin_rebuild_projections(as_json: JsonFlag = False) -> None:
    """Drop every read model and rebuild it from the event log."""
    from infra.admin import rebuild_projections
    from infra.settings import Settings

    result = rebuild_projections(Settings())
    if as_json:
        _print_json(result)
    else:
        rows = ", ".join(f"{n} {t}" for t, n in result["rows"].items())
        _out().print(f"rebuilt from {result['events']} events in {result['seconds']} s: {rows}")


@admin_app.command("recompute-reputation")
def admin_recompute_reputation(as_json: JsonFlag = False) -> None:
    """Recompute every provider's reputation from the event log and compare it with the records."""
    from infra.admin import recompute_reputation
    from infra.settings import Settings

    result = recompute_reputation(Settings())
    if as_json:
        _print_json(result)
    else:
        table = Table("provider", "outcomes", "recomputed", "recorded", "matches", box=None)
        for r in result["providers"]:
            table.add_row(r["provider_id"], str(r["outcomes"]), f"{r['recomputed']:.6f}",
                          f"{r['recorded']:.6f}", "yes" if r["matches"] else "NO")
        _out().print(table)
    if not result["all_match"]:
        raise typer.Exit(1)


def main() -> None:
    app(prog_name="gpgpu")
