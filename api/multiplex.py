"""Live subscriptions, multiplexed (as Hasura serves its live queries).

strawberry runs a subscription's selection once per subscriber per event and sends each
result through its protocol handler. Here, subscribers that sent the same document with
the same result-shaping variables form a `Group` (whatever job or provider each follows:
the root field resolves to the event itself): an event is executed once per group,
serialized once, and the same payload text goes into the `next` frame of every subscriber
of its stream, written straight to its websocket.

What stays strawberry's: everything at subscribe time (the request limits, validation, the
field's gate, the resolver's own checks of whose job it is, `after` and the per-account
cap) and the protocol's replies (`complete` when the resolver returns, the error `next`
when it raises). The resolver hands the subscription to `Hub.serve` once it is allowed;
over our websocket handler (`MultiplexedTransportWS`) the operation's id and socket are
known (`Outlet`), without one (a test calling `schema.subscribe`) it yields as before.

The projection's rows reach the hub as the Broadcaster pushes them; a `Feed` per stream
queues each new row for the subscribers that are at its seq - 1, and each subscriber's own
task (strawberry's operation task) writes its queue after checking that its sign-in still
holds. A subscriber that is behind (it just came, its queue was full, a row was applied by
another replica) reads what it missed from the rows the Broadcaster keeps or from the view,
so every subscriber gets every event once, in order. Once a second the hub asks every
subscriber's sign-in again (a revoked one ends its subscriptions within the second, as
before), and looks at the projection's position: when another process moved it with no
word reaching this one, each feed reads its stream once (not once per subscriber).

A group's executions see a context with no caller: an event's fields must show the same
to everyone allowed to follow the stream (who may follow it is decided at subscribe time).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from inspect import isawaitable
from typing import Any, cast

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    GraphQLError,
    Node,
    OperationDefinitionNode,
    VariableNode,
    Visitor,
    visit,
)
from graphql.execution import Executor, execute_subscription_event
from starlette.websockets import WebSocket, WebSocketDisconnect
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.types import Info

from api import auth

log = logging.getLogger(__name__)

Row = dict[str, Any]
Rows = list[Row]
Query = Callable[[str, tuple[Any, ...]], Awaitable[Rows]]

MAX_QUEUED = 256  # rows waiting for one subscriber's task; past that it reads them later
PAYLOADS_KEPT = 1024  # serialized events per group (of any stream), for those a few behind
SHAPES_KEPT = 512  # documents whose result-shaping variables are remembered
TICK_S = 1.0  # sign-ins asked again, and the projection's position looked at
REVOKED = "unauthenticated: the session or API key was revoked or expired"


@dataclass(frozen=True)
class Source:
    """What a subscription follows: a stream of the read model's `{kind}_events` rows, the
    field's value for a row, and the event types after which the stream ends."""

    kind: str
    key: str
    value: Callable[[Row], Any]
    terminal: tuple[str, ...] = ()

    @property
    def stream(self) -> str:
        return f"{self.kind}:{self.key}"

    @property
    def sql(self) -> str:
        return (f"SELECT * FROM {self.kind}_events WHERE {self.kind}_id = ? AND seq > ? "
                "ORDER BY seq")


@dataclass
class Outlet:
    """Where one graphql-transport-ws operation's `next` frames are written."""

    op_id: str
    send_text: Callable[[str], Awaitable[None]]

    def __post_init__(self) -> None:
        # As strawberry's json.dumps({"id": ..., "type": "next", "payload": ...}) writes it.
        self.prefix = f'{{"id": {json.dumps(self.op_id)}, "type": "next", "payload": '

    def frame(self, payload: str) -> str:
        return f"{self.prefix}{payload}}}"


OUTLET: ContextVar[Outlet | None] = ContextVar("gpgpu_subscription_outlet", default=None)


class MultiplexedTransportWS(BaseGraphQLTransportWSHandler[Any, Any]):
    """strawberry's graphql-transport-ws handler, telling the operation's task its outlet."""

    async def run_operation(self, operation: Operation[Any, Any]) -> None:
        # The task runs in a copy of the context: the value is this operation's alone.
        OUTLET.set(Outlet(operation.id, self._send_text))
        await super().run_operation(operation)

    async def _send_text(self, text: str) -> None:
        ws = cast(WebSocket, self.websocket.ws)  # type: ignore[attr-defined]
        try:
            await ws.send_text(text)
        except WebSocketDisconnect as err:  # as strawberry's own send_json says it
            raise WebSocketDisconnected from err


class _Variables(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def enter_variable(self, node: VariableNode, *_: Any) -> None:
        self.names.add(node.name.value)


def _variables_in(nodes: Iterable[Node]) -> set[str]:
    found = _Variables()
    for node in nodes:
        visit(node, found)
    return found.names


def shaping_variables(document: DocumentNode, operation: OperationDefinitionNode) -> set[str]:
    """The variables that may change an event's result: all those the document uses except
    in the root field's arguments (which say what to follow, e.g. jobId and after)."""
    fragments = [d for d in document.definitions if d is not operation]
    roots = operation.selection_set.selections
    if len(roots) != 1 or not isinstance(roots[0], FieldNode):  # the root field in a fragment
        return _variables_in([operation.selection_set, *fragments])
    root = roots[0]
    parts: list[Node] = [*(operation.directives or ()), *(root.directives or ()), *fragments]
    if root.selection_set is not None:
        parts.append(root.selection_set)
    return _variables_in(parts)


class Group:
    """Subscribers whose document and shaping variables are the same: an event is executed
    and serialized once for all of them. The stream followed (jobId, say) is no part of the
    result (the root field resolves to the event), so one group serves every stream."""

    def __init__(self, key: tuple[str, ...], executor: Executor, value: Callable[[Row], Any],
                 errors: Callable[[list[GraphQLError]], None]):
        self.key, self.executor, self.value, self.errors = key, executor, value, errors
        self.subscribers = 0
        self.executions = 0
        self._payloads: OrderedDict[tuple[str, int], str] = OrderedDict()

    async def payload(self, stream: str, row: Row) -> str:
        """The `next` payload for this row, as JSON text: executed once per group."""
        seq = (stream, row["seq"])
        kept = self._payloads.get(seq)
        if kept is not None:
            return kept
        self.executions += 1
        result: Any = execute_subscription_event(
            self.executor.build_per_event_executor(self.value(row)))
        if isawaitable(result):
            result = await result
        executed = cast(ExecutionResult, result)
        body: dict[str, Any] = {"data": executed.data}
        if executed.errors:
            self.errors(list(executed.errors))
            body["errors"] = [err.formatted for err in executed.errors]
        text = json.dumps(body)
        self._payloads[seq] = text
        if len(self._payloads) > PAYLOADS_KEPT:
            self._payloads.popitem(last=False)
        return text


class Subscriber:
    """One live subscription: the rows queued for it and how far it has got."""

    __slots__ = ("ask", "behind", "denied", "group", "last", "queue", "still_allowed", "token",
                 "wake")

    def __init__(self, group: Group, after: int, still_allowed: Callable[[], Awaitable[bool]],
                 token: str | None):
        self.group, self.last, self.still_allowed = group, after, still_allowed
        self.token = token  # what signed it in: the once-a-second check asks once per token
        self.queue: deque[Row] = deque()
        self.behind = True  # it reads what the stream holds after `after` first
        self.denied = False
        self.ask = False  # its own task asks its sign-in again (the hub's asking failed)
        self.wake: asyncio.Future[None] | None = None

    def offer(self, rows: Rows, read: bool = False) -> None:
        """Rows of the stream, in seq order: queued if they go on from what it has. Pushed
        rows wait while it is behind; the rows it `read` itself go on from where it is."""
        for row in rows:
            seq = row["seq"]
            if seq <= self.last:
                continue
            if (self.behind and not read) or seq != self.last + 1 or len(self.queue) >= MAX_QUEUED:
                self.behind = True
                break
            self.queue.append(row)
            self.last = seq
        self.poke()

    def poke(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)


@dataclass
class Feed:
    """One stream's live subscribers in this process."""

    source: Source
    subscribers: set[Subscriber] = field(default_factory=set)

    def push(self, rows: Rows) -> None:
        for subscriber in self.subscribers:
            subscriber.offer(rows)


class Hub:
    """Every live subscription of this API process, by stream."""

    def __init__(self, query: Query, recent: Callable[[str, int], Rows | None],
                 position: Callable[[], Awaitable[int]] | None = None):
        self.query, self.recent, self.position = query, recent, position
        self.feeds: dict[str, Feed] = {}
        self.groups: dict[tuple[str, ...], Group] = {}
        self._shapes: OrderedDict[tuple[str, str | None], frozenset[str]] = OrderedDict()
        self._seen = 0  # the projection's position as pushed or notified here
        self._ticker: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._refresh_again = False

    # The projection's side (Broadcaster listener, on the event loop)

    def advanced(self, position: int, rows: Rows | None) -> None:
        """The projection reached `position` adding `rows` (None: applied elsewhere)."""
        self._seen = max(self._seen, position)
        if rows is None:
            self._refresh_feeds()
            return
        mine: dict[str, Rows] = {}
        for row in rows:
            if row["stream"] in self.feeds:
                mine.setdefault(row["stream"], []).append(row)
        for stream, pushed in mine.items():
            pushed.sort(key=lambda r: r["seq"])
            self.feeds[stream].push(pushed)

    def _refresh_feeds(self) -> None:
        """Read every feed's stream once: something changed that was not pushed here."""
        if self._refresh is not None and not self._refresh.done():
            self._refresh_again = True
            return
        self._refresh = asyncio.get_running_loop().create_task(self._read_feeds())

    async def _read_feeds(self) -> None:
        self._refresh_again = True
        while self._refresh_again:
            self._refresh_again = False
            for feed in list(self.feeds.values()):
                if not feed.subscribers:
                    continue
                oldest = min(s.last for s in feed.subscribers)
                try:
                    rows = await self.query(feed.source.sql, (feed.source.key, oldest))
                except Exception:
                    log.exception("reading %s for its subscribers failed", feed.source.stream)
                    continue
                feed.push(rows)

    # The subscriber's side (the operation's task)

    async def serve(self, outlet: Outlet, info: Info[Any, Any], source: Source, after: int,
                    still_allowed: Callable[[], Awaitable[bool]], token: str | None,
                    context: Any) -> None:
        """Send `source`'s events after seq `after` to the outlet until the stream ends (a
        terminal event was sent), the subscriber's sign-in ends (auth.Denied) or it goes.
        `still_allowed` says whether `token` (what signed it in) still names someone."""
        group = self._group(info, context, source)
        feed = self.feeds.get(source.stream)
        if feed is None:
            feed = self.feeds[source.stream] = Feed(source)
        subscriber = Subscriber(group, after, still_allowed, token)
        feed.subscribers.add(subscriber)
        group.subscribers += 1
        self._start_ticking()
        try:
            await self._send(feed, subscriber, outlet)
        finally:
            feed.subscribers.discard(subscriber)
            group.subscribers -= 1
            if not group.subscribers:
                del self.groups[group.key]
            if not feed.subscribers and self.feeds.get(source.stream) is feed:
                del self.feeds[source.stream]

    async def _send(self, feed: Feed, subscriber: Subscriber, outlet: Outlet) -> None:
        loop = asyncio.get_running_loop()
        source, first = feed.source, True
        while True:
            if subscriber.denied:
                raise auth.Denied(REVOKED)
            if subscriber.ask:  # an error here ends the subscription, as it always did
                subscriber.ask = False
                if not await subscriber.still_allowed():
                    raise auth.Denied(REVOKED)
            if subscriber.behind:
                await self._catch_up(feed, subscriber, first)
                first = False
            if subscriber.queue:
                if not await subscriber.still_allowed():
                    raise auth.Denied(REVOKED)
                while subscriber.queue:
                    row = subscriber.queue.popleft()
                    payload = await subscriber.group.payload(source.stream, row)
                    await outlet.send_text(outlet.frame(payload))
                    if row["type"] in source.terminal:
                        return
                continue
            if subscriber.behind or subscriber.denied or subscriber.ask:
                continue
            subscriber.wake = loop.create_future()
            await subscriber.wake
            subscriber.wake = None

    async def _catch_up(self, feed: Feed, subscriber: Subscriber, first: bool) -> None:
        """Queue what the subscriber missed: from the kept rows when they go on from where it
        is, else from the view (always when it has just come: this process may have kept
        nothing of a stream that has not moved since it started)."""
        subscriber.behind = False
        source = feed.source
        kept = None if first else self.recent(source.stream, subscriber.last)
        rows = kept or await self.query(source.sql, (source.key, subscriber.last))
        # Rows pushed while it read may have set `behind` again: the next round takes them.
        subscriber.offer(rows, read=True)

    def _group(self, info: Info[Any, Any], context: Any, source: Source) -> Group:
        raw = info._raw_info
        operation = raw.operation
        name = operation.name.value if operation.name else None
        query = info.query or ""
        document = DocumentNode(definitions=(operation, *raw.fragments.values()))
        shape = self._shapes.get((query, name))
        if shape is None:
            shape = self._shapes[(query, name)] = frozenset(
                shaping_variables(document, operation))
            if len(self._shapes) > SHAPES_KEPT:
                self._shapes.popitem(last=False)
        variables = info.variable_values
        shaping = {k: v for k, v in variables.items() if k in shape}
        key = (source.kind, query, name or "", json.dumps(shaping, sort_keys=True, default=str))
        group = self.groups.get(key)
        if group is None:
            built = Executor.build(raw.schema, document, context_value=context,
                                   raw_variable_values=dict(variables), operation_name=name)
            if isinstance(built, list):  # strawberry coerced these very values a moment ago
                raise RuntimeError(f"subscription variables: {built[0].message}")
            schema = info.schema
            group = self.groups[key] = Group(key, built, source.value,
                                             lambda errors: schema.process_errors(errors))
        return group

    # Once a second

    def _start_ticking(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while self.feeds:
            await asyncio.sleep(TICK_S)
            try:
                await self._check_sign_ins()
                if self.position is not None and (now := await self.position()) > self._seen:
                    self._seen = now
                    self._refresh_feeds()
            except Exception:
                log.exception("the subscriptions' once-a-second check failed")

    async def _check_sign_ins(self) -> None:
        """Each token of a live subscriber asked once (together: each may be a lookup)."""
        by_token: dict[str | None, list[Subscriber]] = {}
        for feed in self.feeds.values():
            for subscriber in feed.subscribers:
                if not subscriber.denied:
                    by_token.setdefault(subscriber.token, []).append(subscriber)
        answers = await asyncio.gather(*(subs[0].still_allowed() for subs in by_token.values()),
                                       return_exceptions=True)
        for subs, allowed in zip(by_token.values(), answers, strict=True):
            for subscriber in subs:
                if isinstance(allowed, BaseException):
                    subscriber.ask = True
                elif not allowed:
                    subscriber.denied = True
                else:
                    continue
                subscriber.poke()

    def stats(self) -> dict[str, int]:
        """Feeds, groups, subscribers and executions so far (tests, /metrics)."""
        return {"feeds": len(self.feeds), "groups": len(self.groups),
                "subscribers": sum(len(f.subscribers) for f in self.feeds.values()),
                "executions": sum(g.executions for g in self.groups.values())}
