"""Live event streams for subscriptions: a job's or a provider's events after a seq, in
order, once each, until a terminal event (over our websocket, api/multiplex.py sends them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from api import auth, multiplex
from api.context import Context, I
from api.services import Services

MAX_SEQ = 1 << 30  # `after` past this names no event a stream will hold


def check_after(after: int) -> int:
    """`after` as a seq to read past: -1 and 0 both mean "from the first event" (seqs start
    at 1); anything lower, or absurdly high, is refused naming the argument."""
    if after < -1 or after > MAX_SEQ:
        raise ValueError(f"after: must be -1 or 0 (from the first event) or the seq of an "
                         f"event already seen, at most {MAX_SEQ}; got {after}")
    return max(after, 0)


async def finished_rows(
    services: Services, kind: str, key: str, after: int, terminal: tuple[str, ...]
) -> list[dict[str, Any]] | None:
    """For a stream that already holds one of its `terminal` events: what is after `after`
    (maybe nothing: a client reconnecting after the last event); None while it goes on."""
    if not terminal:
        return None
    marks = ", ".join("?" * len(terminal))
    ended = await services.query(
        f"SELECT max(seq) AS last, max(CASE WHEN type IN ({marks}) THEN 1 ELSE 0 END) AS done "
        f"FROM {kind}_events "
        f"WHERE {kind}_id = ?", (*terminal, key))
    if not ended or not ended[0]["done"]:
        return None
    last = check_after(after)
    if last > ended[0]["last"]:
        raise ValueError(f"after: {kind} {key}'s last event is seq "
                         f"{ended[0]['last']}; got {after}")
    return await services.query(
        f"SELECT * FROM {kind}_events WHERE {kind}_id = ? AND seq > ? ORDER BY seq", (key, last))


async def follow_stream(
    services: Services, kind: str, key: str, after: int, terminal: tuple[str, ...] = (),
    still_allowed: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """Every event of one job's or provider's history after `after`, in order, once each,
    for a subscriber with no websocket outlet (see api/multiplex.py for those).

    Rows the projection pushes are used as they come (the broadcaster keeps the recent
    ones, for a subscriber a few behind); a gap (this replica did not apply that batch,
    or it is long gone) is filled from the view, so a reconnecting subscriber that
    names the last seq it saw gets exactly what it missed. A stream that already holds
    one of its `terminal` events is finished: what is after `after` is sent and the
    stream ends, also when that is nothing (a client reconnecting after the last event).
    """
    sql = f"SELECT * FROM {kind}_events WHERE {kind}_id = ? AND seq > ? ORDER BY seq"
    stream, last = f"{kind}:{key}", check_after(after)
    wake = services.broadcaster.current()
    finished = await finished_rows(services, kind, key, after, terminal)
    if finished is not None:
        for row in finished:
            yield row
        return
    rows = await services.query(sql, (key, last))
    while True:
        for row in rows:
            if row["seq"] != last + 1:
                break  # a gap: read what was missed from the view below
            last = row["seq"]
            yield row
            if row["type"] in terminal:
                return
        # Woken by a batch (with its rows when this process applied it), or every
        # second in case another process runs the projection and no NOTIFY reaches us.
        done, _ = await asyncio.wait({wake}, timeout=1.0)
        if still_allowed is not None and not await still_allowed():
            raise auth.Denied(multiplex.REVOKED)
        pushed = wake.result() if done else None
        wake = services.broadcaster.current()
        kept = services.broadcaster.recent(stream, last)
        if kept is None or (not kept and pushed is None):  # a gap, or news from elsewhere
            rows = await services.query(sql, (key, last))
        else:
            rows = kept


async def live_rows(info: I, source: multiplex.Source, after: int) -> AsyncGenerator[Any, None]:
    """The field's values for `source`'s events after `after`, until a terminal event.

    Over our websocket handler the hub sends them itself (one execution per event for every
    subscriber of the same document) and this yields nothing; elsewhere they are yielded."""
    services, context = info.context.services, info.context
    finished = await finished_rows(services, source.kind, source.key, after, source.terminal)
    if finished is not None:
        for row in finished:
            yield source.value(row)
        return
    outlet = multiplex.OUTLET.get()
    if outlet is not None:
        await services.live.serve(outlet, info, source, check_after(after),
                                  context.still_signed_in, context.token, Context(services))
        return
    rows = follow_stream(services, source.kind, source.key, after, source.terminal,
                         context.still_signed_in)
    async for row in rows:
        yield source.value(row)
