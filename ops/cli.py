"""The operator's `gpgpu`: the user CLI (client/cli/) with the commands that reach past the
API, mounted onto the same typer app.

`gpgpu up` runs the dev stack, `gpgpu admin ...` opens this node's stores and Temporal, and
`gpgpu provider start` runs the provider agent in this process. They live here so that
`client/` imports no server package and the SDK ships alone; the console script `gpgpu`
and `python -m ops` run this module, `python -m client` the user commands alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer
from rich.table import Table

from client.cli import app
from client.cli.common import (
    JsonFlag,
    Shown,
    Target,
    command,
    err,
    fail,
    out,
    provider_app,
    read_password,
    render,
)

admin_app = typer.Typer(
    help="Operator commands on this node's stores (GPGPU_HOME / GPGPU_EVENT_STORE).",
    no_args_is_help=True,
)
app.add_typer(admin_app, name="admin")

# What the commands that open the control plane's stores or Temporal import: the `server`
# extra (pyproject.toml). A provider's or client's machine installs the package without it.
SERVER_MODULES = ("temporalio", "fastapi", "strawberry", "eventsourcing", "psycopg")


def needs_server(command_name: str) -> None:
    """Fail with the install line, not a traceback, where the control plane is not installed."""
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        fail(f"`gpgpu {command_name}` runs the control plane, whose packages are not installed"
             f" here ({', '.join(missing)} missing): pip install 'gpgpu[server]' (a provider's"
             " machine needs none of them: `gpgpu provider start` runs without)", 2)


@admin_app.callback()
def admin() -> None:
    """Operator commands on this node's stores (GPGPU_HOME / GPGPU_EVENT_STORE)."""
    needs_server("admin")


@provider_app.command(
    "start",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def provider_start(ctx: typer.Context) -> None:
    """Run this machine's provider agent (the same as `python -m worker_gpu`; every argument
    is passed on: --provider-id ID [--simulate 2xH100:80] [--price 2.5] ..., --help for all)."""
    target = ctx.find_object(Target) or Target()
    if target.api:  # the agent reads its settings from the environment
        os.environ["GPGPU_API_URL"] = target.api
    from worker_gpu.__main__ import main as agent_main

    agent_main(list(ctx.args))


@app.command("up")
def up() -> None:
    """Start the embedded network here: Temporal, the API, the control worker, two providers."""
    needs_server("up")
    from ops import devstack

    devstack.main()  # exits with the stack's code


@command(admin_app, "rebuild-projections")
def admin_rebuild_projections(as_json: JsonFlag = False) -> Shown:
    """Drop every read model and rebuild it from the event log."""
    from infra.settings import Settings
    from ops.admin import rebuild_projections

    result = rebuild_projections(Settings())
    rows = ", ".join(f"{n} {t}" for t, n in result["rows"].items())
    return Shown(result, lambda: out().print(
        f"rebuilt from {result['events']} events in {result['seconds']} s: {rows}"))


@command(admin_app, "create-admin")
def admin_create_admin(
    email: Annotated[str, typer.Argument(help="The admin's email.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
) -> Shown:
    """Make an admin account (every role) on this node's stores; an existing account keeps
    its password and becomes an admin."""
    from domain.errors import DomainError
    from infra.settings import Settings
    from ops.admin import create_admin

    password = read_password(password_stdin, confirm=True)
    try:
        user = create_admin(Settings(), email, password)
    except DomainError as error:
        fail(str(error), 2)
    return Shown(user, lambda: out().print(
        f"{user.email} is an admin ({', '.join(user.roles)}); sign in with `gpgpu login`"))


@command(admin_app, "reset-password")
def admin_reset_password(
    email: Annotated[str, typer.Argument(help="The locked-out account's email.")],
) -> Shown:
    """Give an account a temporary password, printed once; every session of it ends. Its
    owner signs in with it and chooses their own with `gpgpu passwd`."""
    from domain.errors import DomainError
    from infra.settings import Settings
    from ops.admin import reset_password

    try:
        temporary = reset_password(Settings(), email)
    except DomainError as error:
        fail(str(error), 2)

    def view() -> None:
        out().print(temporary)
        err().print(f"{email}: the temporary password is above; sign in with it, then run "
                    "`gpgpu passwd`")

    return Shown(temporary, view)


@command(admin_app, "revoke-role")
def admin_revoke_role(
    email: Annotated[str, typer.Argument(help="The account's email.")],
    role: Annotated[str, typer.Argument(help="client, provider, operator or admin.")],
) -> Shown:
    """Take a role from an account, on this node's stores (it keeps one at least); its
    sessions and API keys stop acting as it within GPGPU_AUTH_CACHE_TTL_S."""
    from domain.errors import DomainError
    from infra.settings import Settings
    from ops.admin import revoke_role

    try:
        user = revoke_role(Settings(), email, role)
    except DomainError as error:
        fail(str(error), 2)
    return Shown(user, lambda: out().print(f"{user.email}: {', '.join(user.roles)}"))


@command(admin_app, "recompute-reputation")
def admin_recompute_reputation(as_json: JsonFlag = False) -> Shown:
    """Recompute every provider's reputation from the event log and compare it with the records."""
    from infra.settings import Settings
    from ops.admin import recompute_reputation

    result = recompute_reputation(Settings())
    table = Table("provider", "outcomes", "recomputed", "recorded", "matches", box=None)
    for r in result["providers"]:
        table.add_row(r["provider_id"], str(r["outcomes"]), f"{r['recomputed']:.6f}",
                      f"{r['recorded']:.6f}", "yes" if r["matches"] else "NO")
    return Shown(result, lambda: out().print(table), code=0 if result["all_match"] else 1)


# -- admin: jobs' workflows in Temporal ------------------------------------


def _with_temporal(work: Callable[[Any], Any]) -> Any:
    """Run `await work(client)` against this node's Temporal (GPGPU_TEMPORAL_ADDRESS)."""
    import asyncio

    from temporalio.client import Client
    from temporalio.service import RPCError, RPCStatusCode

    from infra.payload_codec import PayloadKeyError
    from infra.settings import Settings

    settings = Settings()

    async def run() -> Any:
        client = await Client.connect(settings.temporal_address,
                                      namespace=settings.temporal_namespace,
                                      data_converter=settings.temporal_converter())
        return await work(client)

    try:
        return asyncio.run(run())
    except RPCError as err:
        found = err.status != RPCStatusCode.NOT_FOUND
        typer.echo(f"error: {'Temporal: ' if found else ''}{err.message}", err=True)
    except RuntimeError as err:  # temporalio's "Failed client connect: ..."
        typer.echo(f"error: cannot reach Temporal at {settings.temporal_address}: {err}",
                   err=True)
    except PayloadKeyError as err:  # production without GPGPU_TEMPORAL_PAYLOAD_KEYS
        typer.echo(f"error: {err}", err=True)
    _exit_after_temporal(1)


def _exit_after_temporal(code: int = 0) -> NoReturn:
    """temporalio may abort at interpreter exit after the work is done (an open upstream
    issue, seen in about 1 in 3 short runs here): a command run from a terminal exits on
    purpose. Inside a harness that replaced stdout (tests), it exits normally."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    if sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__:
        os._exit(code)
    raise typer.Exit(code)


def _attributes(execution: Any) -> dict[str, Any]:
    return {pair.key.name: pair.value for pair in execution.typed_search_attributes}


def _when(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _marker_detail(marker: Any) -> str:
    """A local activity's name (the job's control steps run as such), a patch's id, or the
    marker's name."""
    name = str(marker.marker_name)
    key = {"core_local_activity": "data", "core_patch": "patch-data"}.get(name)
    if key is None or key not in marker.details or not marker.details[key].payloads:
        return name
    try:
        data = json.loads(marker.details[key].payloads[0].data)
    except ValueError:
        return name
    if name == "core_local_activity":
        return f"{data.get('activity_type', '?')} (local)"
    return f"patch {data.get('id', '?')}"


@admin_app.command("workflow")
def admin_workflow(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    as_json: JsonFlag = False,
) -> None:
    """A job's workflow in Temporal: ids, status, search attributes and its history events."""
    from datetime import UTC

    from temporalio.api.enums.v1 import EventType

    from workflows.contracts import job_workflow_id

    async def describe(client: Any) -> dict[str, Any]:
        handle = client.get_workflow_handle(job_workflow_id(job_id))
        info = await handle.describe()
        events = []
        async for e in handle.fetch_history_events():
            detail = ""
            if e.HasField("activity_task_scheduled_event_attributes"):
                detail = e.activity_task_scheduled_event_attributes.activity_type.name
            elif e.HasField("marker_recorded_event_attributes"):
                detail = _marker_detail(e.marker_recorded_event_attributes)
            events.append({
                "id": e.event_id,
                "type": EventType.Name(e.event_type).removeprefix("EVENT_TYPE_"),
                "time": e.event_time.ToDatetime(tzinfo=UTC).isoformat(),
                "detail": detail,
            })
        return {
            "workflow_id": info.id, "run_id": info.run_id,
            "status": info.status.name if info.status else None,
            "workflow_type": info.workflow_type, "task_queue": info.task_queue,
            "start_time": _when(info.start_time), "close_time": _when(info.close_time),
            "search_attributes": _attributes(info), "history": events,
        }

    found = _with_temporal(describe)

    def view() -> None:
        console = out()
        grid = Table.grid(padding=(0, 2))
        for label, key in (("workflow", "workflow_id"), ("run", "run_id"), ("status", "status"),
                           ("type", "workflow_type"), ("task queue", "task_queue"),
                           ("started", "start_time"), ("closed", "close_time")):
            grid.add_row(label, str(found[key] or "-"))
        attrs = " ".join(f"{k}={v}" for k, v in sorted(found["search_attributes"].items()))
        grid.add_row("search attributes", attrs or "-")
        console.print(grid)
        table = Table("#", "time", "event", "detail", box=None,
                      title=f"history: {len(found['history'])} events", title_justify="left")
        for e in found["history"]:
            table.add_row(str(e["id"]), e["time"], e["type"], e["detail"])
        console.print(table)

    render(Shown(found, view), as_json)
    _exit_after_temporal()


@admin_app.command("jobs")
def admin_jobs(
    state: Annotated[str | None, typer.Option(help="e.g. QUEUED, RUNNING, SUCCEEDED.")] = None,
    client_id: Annotated[
        str | None, typer.Option("--client", "--client-id", help="The client's id.")
    ] = None,
    gpu_model: Annotated[str | None, typer.Option(help="As the job asked ('any': none).")] = None,
    node: Annotated[str | None, typer.Option(help="The job's node.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """Job workflows found through Temporal's visibility on their search attributes."""
    from workflows.search_attributes import job_query

    try:
        query = job_query(state.upper() if state else None, client_id, gpu_model, node)
    except ValueError as error:
        fail(str(error), 2)

    async def search(client: Any) -> list[dict[str, Any]]:
        return [
            {"workflow_id": w.id, "run_id": w.run_id,
             "status": w.status.name if w.status else None, "start_time": _when(w.start_time),
             "close_time": _when(w.close_time), "search_attributes": _attributes(w)}
            async for w in client.list_workflows(query, limit=limit)
        ]

    found = _with_temporal(search)

    def view() -> None:
        if not found:
            err().print(f"no job workflow matches {query}")
            return
        table = Table("workflow", "state", "client", "gpu model", "node", "status", "started",
                      box=None)
        for w in found:
            a = w["search_attributes"]
            table.add_row(w["workflow_id"], a.get("GpgpuState", "-"), a.get("GpgpuClient", "-"),
                          a.get("GpgpuGpuModel", "-"), a.get("GpgpuNode", "-"),
                          str(w["status"]), str(w["start_time"]))
        out().print(table)

    render(Shown({"query": query, "workflows": found}, view), as_json)
    _exit_after_temporal()


def main() -> None:
    app(prog_name="gpgpu")
