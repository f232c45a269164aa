"""The `gpgpu` command line: jobs, storage, account, providers, and `gpgpu up`.

Results go to stdout (one JSON document with --json); progress, live views and
errors go to stderr. An expected error is one line, `error: ...`, and exit code 2
for bad input, 1 for anything else.
"""

from __future__ import annotations

import dataclasses
import functools
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
from client.models import Job, Provider
from client.render import credits
from client.sdk import GpgpuClient
from client.views import (
    account_grid,
    earnings_view,
    job_detail,
    jobs_table,
    objects_table,
    provider_detail,
    providers_table,
    queues_table,
    state_text,
    waiting_table,
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
provider_app = typer.Typer(
    help="Rent out GPUs: run the agent, see status and earnings, suspend GPUs, set the price.",
    no_args_is_help=True,
)
app.add_typer(provider_app, name="provider")
node_app = typer.Typer(help="A node's queues: list, configure, see who waits.",
                       no_args_is_help=True)
app.add_typer(node_app, name="node")

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
        typer.Option("--client", help="Whose storage space (an admin's choice; default: "
                     "your own).", metavar="ID"),
    ] = None,
) -> None:
    """Who you are comes from GPGPU_API_KEY, else the token `gpgpu login` saved."""
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


# -- accounts -------------------------------------------------------------

keys_app = typer.Typer(help="API keys for programs and provider agents: create, list, revoke.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")
ROLE_CHOICES = "client, provider, operator"


def _password(password_stdin: bool, confirm: bool = False) -> str:
    if password_stdin:
        import sys

        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt("password", hide_input=True, confirmation_prompt=confirm))


@app.command("login")
@fails_cleanly
def login(
    ctx: typer.Context,
    email: Annotated[str | None, typer.Option(help="Your account's email.")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    sign_up: Annotated[
        bool, typer.Option("--sign-up", help="Create the account first.")
    ] = False,
    role: Annotated[
        list[str] | None,
        typer.Option("--role", help=f"With --sign-up: {ROLE_CHOICES} (repeat for more).")
    ] = None,
) -> None:
    """Sign in and keep the session token for this API in ~/.config/gpgpu/credentials
    (GPGPU_API_KEY, when set, is used instead)."""
    from client.config import save_credentials

    email = email or str(typer.prompt("email"))
    password = _password(password_stdin, confirm=sign_up)
    with _client(ctx) as gp:
        if sign_up:
            token, user = gp.sign_up(email, password, list(role or ["client"]))
        else:
            token, user = gp.sign_in(email, password)
        path = save_credentials(gp.api_url, token, user.email)
    _err().print(f"signed in as {user.email} ({', '.join(user.roles)}); token kept in {path}")


@app.command("logout")
@fails_cleanly
def logout(ctx: typer.Context) -> None:
    """End the saved session and forget its token."""
    from client.config import forget_credentials, load_credentials

    with _client(ctx) as gp:
        saved = load_credentials().get(gp.api_url)
        if saved and gp.token == saved.get("token"):
            gp.sign_out()
        forget_credentials(gp.api_url)
    _err().print("signed out")


@app.command("passwd")
@fails_cleanly
def passwd(
    ctx: typer.Context,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin",
                           help="Read the current and the new password from stdin, one a line.")
    ] = False,
) -> None:
    """Change your password; your other sessions end and this one is kept."""
    from client.config import load_credentials, save_credentials

    if password_stdin:
        import sys

        lines = sys.stdin.read().splitlines()
        if len(lines) < 2:
            raise GpgpuError("--password-stdin: give the current password, then the new one")
        current, new = lines[0], lines[1]
    else:
        current = str(typer.prompt("current password", hide_input=True))
        new = str(typer.prompt("new password", hide_input=True, confirmation_prompt=True))
    with _client(ctx) as gp:
        saved = load_credentials().get(gp.api_url)
        token, user = gp.change_password(current, new)
        if saved:
            save_credentials(gp.api_url, token, user.email)
    _err().print(f"password changed for {user.email}; other sessions have ended")


@app.command("add-role")
@fails_cleanly
def add_role(
    ctx: typer.Context,
    roles: Annotated[list[str], typer.Argument(help="client, provider or operator (several "
                                                    "at once if you like).")],
    as_json: JsonFlag = False,
) -> None:
    """Take on more roles: a client who also offers GPUs adds `provider`. An API key keeps
    the scopes it was made with: make a new one to act in the new role from a program."""
    with _client(ctx) as gp:
        user = gp.add_roles(roles)
    if as_json:
        _print_json(user)
        return
    _err().print(f"{user.email} now acts as {', '.join(user.roles)}")


@app.command("whoami")
@fails_cleanly
def whoami(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Who the API takes you for: email, roles, client id, providers and nodes."""
    with _client(ctx) as gp:
        user = gp.me()
    if user is None:
        raise GpgpuError("not signed in: run `gpgpu login`, or set GPGPU_API_KEY")
    if as_json:
        _print_json(user)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_row("email", user.email)
    grid.add_row("roles", ", ".join(user.roles))
    grid.add_row("client", user.client_id or "-")
    grid.add_row("providers", ", ".join(user.provider_ids) or "-")
    grid.add_row("nodes", ", ".join(user.node_ids) or "-")
    _out().print(grid)


@keys_app.command("create")
@fails_cleanly
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="What it is for, e.g. gpu-box-1.")],
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help=f"A role it may act as: {ROLE_CHOICES} (repeat).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """A new key: printed once, only its hash is kept. Needs a signed-in session."""
    with _client(ctx) as gp:
        scopes = list(scope or [])
        if not scopes:
            user = gp.me()
            scopes = [r for r in (user.roles if user else []) if r != "admin"]
        key = gp.create_api_key(name, scopes)
    if as_json:
        _print_json(key)
    else:
        _err().print(f"API key {key.name} ({', '.join(key.scopes)}); shown only now:")
        typer.echo(key.key)


@keys_app.command("list")
@fails_cleanly
def keys_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Your API keys (their names and scopes; never the keys)."""
    with _client(ctx) as gp:
        keys = gp.api_keys()
    if as_json:
        _print_json(keys)
        return
    table = Table("id", "name", "scopes", "created", box=None)
    for k in keys:
        table.add_row(k.id, k.name, ", ".join(k.scopes), k.created_at)
    _out().print(table)


@keys_app.command("revoke")
@fails_cleanly
def keys_revoke(ctx: typer.Context, key_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Revoke a key: it stops working within seconds."""
    with _client(ctx) as gp:
        gp.revoke_api_key(key_id)
    typer.echo(f"revoked {key_id}")


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
        if not as_json:
            for warning in job.warnings:
                _err().print(f"warning: {warning}", markup=False, highlight=False)
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


@job_app.command("logs")
@fails_cleanly
def job_logs(ctx: typer.Context, job_id: str) -> None:
    """The job's output (the tail each run reported), run by run."""
    with _client(ctx) as gp:
        job = gp.job(job_id)
    out = _out()
    runs = [e for e in job.events if e.type == "ExecutionFinished"]
    if not runs:
        out.print(f"job {job_id} has not finished a run yet (it is {job.state})")
        return
    for e in runs:
        head = f"--- run {e.data.get('attempt', '?')} on {e.data.get('provider_id', '?')}"
        head += f", exit {e.data.get('exit_code')}"
        out.print(head + " ---", markup=False, highlight=False)
        out.print(str(e.data.get("log_tail", "")).rstrip("\n"), markup=False, highlight=False)


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


@app.command("offers")
@fails_cleanly
def offers(
    ctx: typer.Context,
    gpus: Annotated[int, typer.Option(help="GPUs on one machine.")] = 1,
    model: Annotated[str | None, typer.Option(help="GPU model, e.g. H100.")] = None,
    min_memory_gb: Annotated[int, typer.Option(help="Least GPU memory, GB.")] = 0,
    max_price: Annotated[str, typer.Option(help="Most credits per GPU-hour.")] = "1000000",
    region: Annotated[str | None, typer.Option(help="Only this region.")] = None,
    min_reputation: Annotated[float, typer.Option(help="Least reputation, 0 to 1.")] = 0.0,
    queue: Annotated[str, typer.Option(help="'<node>/<queue>' or a default-node queue.")] = (
        "default"),
    show_all: Annotated[bool, typer.Option("--all", help="Also GPUs that don't fit, and why.")]
    = False,
    as_json: JsonFlag = False,
) -> None:
    """Search GPUs that fit these filters now, cheapest and best first (every filter is
    checked exactly as a job spec's; a bad one is an error, never dropped)."""
    resources: dict[str, object] = {"gpus": gpus, "min_gpu_memory_gb": min_memory_gb,
                                    "min_reputation": min_reputation}
    if model is not None:
        resources["gpu_model"] = model
    if region is not None:
        resources["region"] = region
    spec = {"name": "offer-search", "command": ["true"], "max_price_per_gpu_hour": max_price,
            "queue": queue, "resources": resources}
    with _client(ctx) as gp:
        found = gp.explain(spec)
    rows = [g for g in found.get("gpus", []) if show_all or g["eligible"]]
    if as_json:
        _print_json(rows)
        return
    table = Table("provider", "gpu", "model", "memory MiB", "price/GPU-hour", "score",
                  "why not", box=None)
    for g in rows:
        table.add_row(g["providerId"], str(g["index"]), g["model"], str(g["memoryMb"]),
                      micro_to_credits(g["pricePerGpuHourMicro"]), f"{g['score']:.3f}",
                      g["reason"])
    out = _out()
    if rows:
        out.print(table)
    else:
        out.print("no GPU fits these filters now (try --all to see why)")


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


# -- providers' own controls ------------------------------------------------


ProviderId = Annotated[str, typer.Argument(metavar="PROVIDER", help="The provider's id.")]
GpuIndex = Annotated[int, typer.Argument(metavar="GPU_INDEX", help="The GPU's index.", min=0)]


@provider_app.command("status")
@fails_cleanly
def provider_status(
    ctx: typer.Context,
    provider_id: Annotated[
        str | None, typer.Argument(metavar="[PROVIDER]", help="One provider in detail.")
    ] = None,
    samples: Annotated[int, typer.Option(help="Telemetry samples to include (--json).")] = 1,
    as_json: JsonFlag = False,
) -> None:
    """Each GPU's status (online, busy, suspended, degraded, offline), price, last heartbeat."""
    with _client(ctx) as gp:
        if provider_id is None:
            found = gp.providers()
            if as_json:
                _print_json(found)
            elif not found:
                _err().print("no providers registered yet")
            else:
                _out().print(providers_table(found))
            return
        provider = gp.provider(provider_id, samples=max(1, samples))
    if as_json:
        _print_json(provider)
    else:
        _out().print(provider_detail(provider))


@provider_app.command("earnings")
@fails_cleanly
def provider_earnings(
    ctx: typer.Context,
    provider_id: ProviderId,
    limit: Annotated[int, typer.Option(help="How many ledger entries, newest first.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """What the provider earned for verified work, its balance, and its ledger entries."""
    with _client(ctx) as gp:
        earnings = gp.provider_earnings(provider_id, limit)
    if as_json:
        _print_json(earnings)
    else:
        _out().print(earnings_view(earnings))


def _gpu_line(provider_id: str, index: int, provider: Provider) -> str:
    gpu = next((g for g in provider.gpus if g.index == index), None)
    state = gpu.status if gpu is not None else "?"
    return f"GPU {index} of {provider_id}: {state}"


@provider_app.command("suspend")
@fails_cleanly
def provider_suspend(
    ctx: typer.Context, provider_id: ProviderId, index: GpuIndex, as_json: JsonFlag = False
) -> None:
    """Take a GPU out of service: it gets no new work; a job running on it finishes."""
    with _client(ctx) as gp:
        provider = gp.suspend_gpu(provider_id, index)
    if as_json:
        _print_json(provider)
    else:
        _out().print(_gpu_line(provider_id, index, provider))


@provider_app.command("resume")
@fails_cleanly
def provider_resume(
    ctx: typer.Context, provider_id: ProviderId, index: GpuIndex, as_json: JsonFlag = False
) -> None:
    """Put a suspended GPU back in service."""
    with _client(ctx) as gp:
        provider = gp.resume_gpu(provider_id, index)
    if as_json:
        _print_json(provider)
    else:
        _out().print(_gpu_line(provider_id, index, provider))


@provider_app.command("price")
@fails_cleanly
def provider_price(
    ctx: typer.Context,
    provider_id: ProviderId,
    price: Annotated[str, typer.Argument(metavar="CREDITS", help="Per GPU-hour, e.g. 2.5")],
    as_json: JsonFlag = False,
) -> None:
    """Set the price per GPU-hour: jobs placed from now pay it; running ones keep theirs."""
    with _client(ctx) as gp:
        provider = gp.set_price(provider_id, price)
    if as_json:
        _print_json(provider)
    else:
        _out().print(f"{provider_id}: {credits(provider.price_per_gpu_hour_micro)} credits "
                     "per GPU-hour for new jobs")


# -- nodes and queues --------------------------------------------------------


@node_app.command("queues")
@fails_cleanly
def node_queues(
    ctx: typer.Context,
    node_id: Annotated[str | None, typer.Argument(metavar="[NODE]", help="Only this node.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Every queue: the GPU models it serves, priority levels, per-client cap, order, waiting."""
    with _client(ctx) as gp:
        nodes = [n for n in gp.nodes() if node_id is None or n.node_id == node_id]
    if node_id is not None and not nodes:
        raise GpgpuError(f"node {node_id} not found")
    if as_json:
        _print_json([q for n in nodes for q in n.queues])
    else:
        _out().print(queues_table(nodes))


@node_app.command("configure-queue")
@fails_cleanly
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
) -> None:
    """Create a queue or change it; what is not given stays as it is (or its default)."""
    if gpu_model and any_model:
        raise BadInput("--gpu-model and --any-model: give one or the other")
    with _client(ctx) as gp:
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
        nodes = [n for n in gp.nodes() if n.node_id == node_id]
    _out().print(queues_table([dataclasses.replace(
        n, queues=[q for q in n.queues if q.name == name]) for n in nodes]))


@node_app.command("waiting")
@fails_cleanly
def node_waiting(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(metavar="[QUEUE]", help="<node>/<queue>")] = (
        "local/default"
    ),
    limit: Annotated[int, typer.Option(help="How many, from the front.")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """A queue's waiting jobs in the order they will be placed, with expected starts."""
    with _client(ctx) as gp:
        jobs = gp.queue(queue, limit)
    if as_json:
        _print_json(jobs)
    elif not jobs:
        _err().print(f"nobody waits in {queue}")
    else:
        _out().print(waiting_table(jobs))


def main() -> None:
    """The user commands alone (`python -m client`); `gpgpu` adds the operator's (ops/cli.py)."""
    app(prog_name="gpgpu")
