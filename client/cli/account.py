"""Who you are: login, logout, passwd, add-role, whoami, API keys, account."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from client.cli.common import (
    JsonFlag,
    Shown,
    app,
    command,
    connect,
    err,
    keys_app,
    out,
    read_password,
)
from client.config import forget_credentials, load_credentials, save_credentials
from client.errors import GpgpuError
from client.models import ApiKey, User
from client.views import account_grid

ROLE_CHOICES = "client, provider, operator"


def _said(message: str, data: object = None) -> Shown:
    """A one-line note on stderr for people (the result, if any, is the JSON)."""
    return Shown(data, lambda: err().print(message))


@command(app, "login")
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
) -> Shown:
    """Sign in and keep the session token for this API in ~/.config/gpgpu/credentials
    (GPGPU_API_KEY, when set, is used instead)."""
    email = email or str(typer.prompt("email"))
    password = read_password(password_stdin, confirm=sign_up)
    with connect(ctx) as gp:
        if sign_up:
            token, user = gp.sign_up(email, password, list(role or ["client"]))
        else:
            token, user = gp.sign_in(email, password)
        path = save_credentials(gp.api_url, token, user.email)
    return _said(f"signed in as {user.email} ({', '.join(user.roles)}); token kept in {path}",
                 user)


@command(app, "logout")
def logout(ctx: typer.Context) -> Shown:
    """End the saved session and forget its token."""
    with connect(ctx) as gp:
        saved = load_credentials().get(gp.api_url)
        if saved and gp.token == saved.get("token"):
            gp.sign_out()
        forget_credentials(gp.api_url)
    return _said("signed out")


@command(app, "passwd")
def passwd(
    ctx: typer.Context,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin",
                           help="Read the current and the new password from stdin, one a line.")
    ] = False,
) -> Shown:
    """Change your password; your other sessions end and this one is kept."""
    if password_stdin:
        lines = sys.stdin.read().splitlines()
        if len(lines) < 2:
            raise GpgpuError("--password-stdin: give the current password, then the new one")
        current, new = lines[0], lines[1]
    else:
        current = str(typer.prompt("current password", hide_input=True))
        new = str(typer.prompt("new password", hide_input=True, confirmation_prompt=True))
    with connect(ctx) as gp:
        saved = load_credentials().get(gp.api_url)
        token, user = gp.change_password(current, new)
        if saved:
            save_credentials(gp.api_url, token, user.email)
    return _said(f"password changed for {user.email}; other sessions have ended", user)


@command(app, "add-role")
def add_role(
    ctx: typer.Context,
    roles: Annotated[list[str], typer.Argument(help="client, provider or operator (several "
                                                    "at once if you like).")],
    as_json: JsonFlag = False,
) -> Shown:
    """Take on more roles: a client who also offers GPUs adds `provider`. An API key keeps
    the scopes it was made with: make a new one to act in the new role from a program."""
    with connect(ctx) as gp:
        user = gp.add_roles(roles)
    return _said(f"{user.email} now acts as {', '.join(user.roles)}", user)


def _user_grid(user: User) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_row("email", user.email)
    grid.add_row("roles", ", ".join(user.roles))
    grid.add_row("client", user.client_id or "-")
    grid.add_row("providers", ", ".join(user.provider_ids) or "-")
    grid.add_row("nodes", ", ".join(user.node_ids) or "-")
    return grid


@command(app, "whoami")
def whoami(ctx: typer.Context, as_json: JsonFlag = False) -> Shown:
    """Who the API takes you for: email, roles, client id, providers and nodes."""
    with connect(ctx) as gp:
        user = gp.me()
    if user is None:
        raise GpgpuError("not signed in: run `gpgpu login`, or set GPGPU_API_KEY")
    return Shown(user, lambda: out().print(_user_grid(user)))


@command(app, "account")
def account(ctx: typer.Context, as_json: JsonFlag = False) -> Shown:
    """Your balance and what is held in escrow for running jobs."""
    with connect(ctx) as gp:
        acct = gp.account()
    return Shown(acct, lambda: out().print(account_grid(acct)))


# -- API keys -------------------------------------------------------------


@command(keys_app, "create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="What it is for, e.g. gpu-box-1.")],
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help=f"A role it may act as: {ROLE_CHOICES} (repeat).")
    ] = None,
    as_json: JsonFlag = False,
) -> Shown:
    """A new key: printed once, only its hash is kept. Needs a signed-in session."""
    with connect(ctx) as gp:
        scopes = list(scope or [])
        if not scopes:
            user = gp.me()
            scopes = [r for r in (user.roles if user else []) if r != "admin"]
        key = gp.create_api_key(name, scopes)

    def view() -> None:
        err().print(f"API key {key.name} ({', '.join(key.scopes)}); shown only now:")
        typer.echo(key.key)

    return Shown(key, view)


def _keys_table(keys: list[ApiKey]) -> Table:
    table = Table("id", "name", "scopes", "created", box=None)
    for k in keys:
        table.add_row(k.id, k.name, ", ".join(k.scopes), k.created_at)
    return table


@command(keys_app, "list")
def keys_list(ctx: typer.Context, as_json: JsonFlag = False) -> Shown:
    """Your API keys (their names and scopes; never the keys)."""
    with connect(ctx) as gp:
        keys = gp.api_keys()
    return Shown(keys, lambda: out().print(_keys_table(keys)))


@command(keys_app, "revoke")
def keys_revoke(ctx: typer.Context, key_id: Annotated[str, typer.Argument(metavar="ID")]) -> Shown:
    """Revoke a key: it stops working within seconds."""
    with connect(ctx) as gp:
        gp.revoke_api_key(key_id)
    return Shown(key_id, lambda: typer.echo(f"revoked {key_id}"))
