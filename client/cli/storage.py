"""`gpgpu storage ...`: your storage space: put, get, ls, rm."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Annotated

import typer

from client._http import bind_progress
from client.cli.common import JsonFlag, Shown, command, connect, err, out, storage_app, transfers
from client.errors import BadInput
from client.views import objects_table


@command(storage_app, "put")
def storage_put(ctx: typer.Context, local: Path, key: str) -> Shown:
    """Upload a local file to KEY in your storage space."""
    if not local.is_file():
        raise BadInput(f"{local}: no such file")
    with connect(ctx) as gp, transfers() as report:
        obj = gp.upload(local, key, bind_progress(report, key))
    return Shown(obj, lambda: typer.echo(f"{obj.key}  {obj.size} bytes  {obj.digest}"))


@command(storage_app, "get")
def storage_get(ctx: typer.Context, key: str, local: Path) -> Shown:
    """Download KEY to LOCAL (a file, or a folder to put it in), verifying its digest."""
    dest = local / PurePosixPath(key).name if local.is_dir() else local
    with connect(ctx) as gp, transfers() as report:
        obj = gp.download(key, dest, bind_progress(report, key))
    return Shown(obj, lambda: typer.echo(str(dest)))


@command(storage_app, "ls")
def storage_ls(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(help="Only keys that start with this.")] = "",
    as_json: JsonFlag = False,
) -> Shown:
    """List the objects in your storage space under PREFIX."""
    with connect(ctx) as gp:
        objects = gp.list_objects(prefix)
    if not objects:
        empty = f"nothing stored under {prefix!r}" if prefix else "your storage is empty"
        return Shown(objects, lambda: err().print(empty))
    return Shown(objects, lambda: out().print(objects_table(objects)))


@command(storage_app, "rm")
def storage_rm(ctx: typer.Context, key: str) -> Shown:
    """Delete KEY from your storage space."""
    with connect(ctx) as gp:
        gp.delete(key)
    return Shown(key, lambda: typer.echo(f"deleted {key}"))
