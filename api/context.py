"""The request context every resolver gets (`I`), and the helpers the features' resolvers
share: who is signed in, a domain command run in a thread, a bounded argument."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

from strawberry.fastapi import BaseContext
from strawberry.types import Info

from api import auth
from api.errors import Refusal, refused
from api.services import Services
from domain.errors import DomainError
from domain.identity import Caller
from domain.limits import Bound
from readmodel.queue import QueueLine, queue_line

T = TypeVar("T")


class Context(BaseContext):
    def __init__(self, services: Services, caller: Caller | None = None,
                 token: str | None = None):
        super().__init__()
        self.services = services
        self.caller = caller  # None: anonymous (or a token that is not valid)
        self.token = token  # what named the caller; a subscription checks it again
        self.lines: dict[str, asyncio.Task[QueueLine]] = {}  # per request: queue -> its line
        self._provider_nodes: asyncio.Task[dict[str, set[str]]] | None = None

    async def line(self, queue: str) -> QueueLine:
        """The queue's waiting jobs in order, worked out once per request."""
        if queue not in self.lines:
            self.lines[queue] = asyncio.ensure_future(asyncio.to_thread(
                queue_line, self.services.views, self.services.settings, queue))
        return await self.lines[queue]

    @property
    def client_id(self) -> str:
        """The caller's own client id; refused (auth.Denied) without the client role."""
        return auth.client_of(self.caller)

    async def provider_nodes(self) -> dict[str, set[str]]:
        """Provider id -> the nodes it belongs to, once per request."""
        if self._provider_nodes is None:
            self._provider_nodes = asyncio.ensure_future(_provider_nodes(self.services))
        return await self._provider_nodes

    async def allowed(self, rule: Callable[..., bool], *args: Any) -> bool:
        """auth's `rule` for the caller; when it says no, asked once more past the cache:
        what the caller owns may have changed through another API replica a moment ago."""
        if rule(self.caller, *args):
            return True
        if self.token is None:
            return False
        self.caller = await self.services.auth.authenticate(self.token, fresh=True)
        return rule(self.caller, *args)

    async def still_signed_in(self) -> bool:
        """For a long subscription: does its token still name someone (not revoked)?"""
        if self.token is None:
            return self.caller is None
        return await self.services.auth.authenticate(self.token) is not None


async def _provider_nodes(services: Services) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in await services.query("SELECT node_id, provider_ids FROM nodes"):
        for provider_id in json.loads(r["provider_ids"]):
            out.setdefault(provider_id, set()).add(r["node_id"])
    return out


I = Info[Context, None]  # noqa: E741


def signed_in(info: I) -> Caller:
    caller = info.context.caller
    if caller is None:  # the gates let no one through here anonymously
        raise auth.Denied("unauthenticated: sign in, or send Authorization: Bearer <token>")
    return caller


async def run_command(fn: Callable[..., T], *args: Any) -> T:
    """A domain command in a thread; its refusal is a `Refusal` naming the field as the
    schema does (a FieldError result under `@refusable`, a GraphQL error otherwise)."""
    try:
        return await asyncio.to_thread(fn, *args)
    except DomainError as err:
        raise refused(err) from None


def bounded(field: str, bound: Bound, value: Any) -> Any:
    """`value` within its bound (domain/limits.py), or a `Refusal` naming the field."""
    if (why := bound.problem(value)) is not None:
        raise Refusal(field, why)
    return value
