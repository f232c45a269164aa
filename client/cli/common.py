"""What every command shares: the typer apps, the API target, errors, and the one output path.

A command returns `Shown(data, view)`: `render` prints `data` as one JSON document on
stdout when the command was given --json, else calls `view` to draw it for people. No
command prints its result any other way, so --json means the same thing everywhere.
Progress, live views and errors go to stderr. An expected error is one line,
`error: ...`, and exit code 2 for bad input, 1 for anything else.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn, ParamSpec

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

from client._http import FileProgress
from client.errors import BadInput, GpgpuError
from client.sdk import GpgpuClient

P = ParamSpec("P")

app = typer.Typer(
    help="GPGPU: hire GPUs, run jobs on your data, get verified results.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
job_app = typer.Typer(help="Submit and inspect jobs.", no_args_is_help=True)
storage_app = typer.Typer(help="Your storage space: put, get, ls, rm.", no_args_is_help=True)
provider_app = typer.Typer(
    help="Rent out GPUs: run the agent, see status and earnings, suspend GPUs, set the price.",
    no_args_is_help=True,
)
node_app = typer.Typer(help="A node's queues: list, configure, see who waits.",
                       no_args_is_help=True)
keys_app = typer.Typer(help="API keys for programs and provider agents: create, list, revoke.",
                       no_args_is_help=True)
app.add_typer(job_app, name="job")
app.add_typer(storage_app, name="storage")
app.add_typer(provider_app, name="provider")
app.add_typer(node_app, name="node")
app.add_typer(keys_app, name="keys")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


@dataclasses.dataclass
class Target:
    api: str | None = None
    client: str | None = None


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
def connect(ctx: typer.Context) -> Iterator[GpgpuClient]:
    """The SDK client for this invocation's --api and --client."""
    target = ctx.find_object(Target) or Target()
    with GpgpuClient(target.api, target.client) as gp:
        yield gp


# -- output ---------------------------------------------------------------


def out() -> Console:
    return Console(highlight=False)


def err() -> Console:
    return Console(stderr=True, highlight=False)


@dataclasses.dataclass(frozen=True)
class Shown:
    """A command's result: `data` is what --json prints, `view` draws it for people; the
    command exits with `code` either way."""

    data: Any
    view: Callable[[], object]
    code: int = 0


def plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def render(shown: Shown, as_json: bool) -> None:
    """The one place a command's result is printed."""
    if as_json:
        typer.echo(json.dumps(plain(shown.data), indent=2))
    else:
        shown.view()
    if shown.code:
        raise typer.Exit(shown.code)


def fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def fails_cleanly(fn: Callable[P, Any]) -> Callable[P, Any]:
    """Turn expected errors into one line on stderr and an exit code; bugs still trace."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
        try:
            return fn(*args, **kwargs)
        except BadInput as error:
            fail(str(error), 2)
        except GpgpuError as error:
            fail(str(error), 1)
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            fail(f"{where}{error.strerror or error}", 1)
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper


def command(
    group: typer.Typer, name: str, **settings: Any
) -> Callable[[Callable[P, Shown | None]], Callable[P, Shown | None]]:
    """Register a command on `group`: its expected errors are one line, and the Shown it
    returns is rendered (as JSON when it was given --json: a parameter named `as_json`)."""

    def register(fn: Callable[P, Shown | None]) -> Callable[P, Shown | None]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            shown = fn(*args, **kwargs)
            if shown is not None:
                render(shown, bool(kwargs.get("as_json", False)))

        group.command(name, **settings)(fails_cleanly(run))
        return fn

    return register


@contextmanager
def transfers(enabled: bool = True) -> Iterator[FileProgress]:
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
        console=err(),
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


def read_password(password_stdin: bool, confirm: bool = False) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt("password", hide_input=True, confirmation_prompt=confirm))
