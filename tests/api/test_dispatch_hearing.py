"""An API stamps its listener row only while providers reach it (api/dispatch.py): an API
that is up but hears no one (an outage in front of it) lets no provider be judged silent."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.dispatch import HEARD_FOR_S, Dispatch
from infra.assignments import AssignmentBoard
from infra.listeners import LISTEN_EVERY_S, LISTEN_GAP_S
from infra.row_cipher import RowCipher
from readmodel.schema import ViewDB
from tests.support.stores import store_settings


@pytest.fixture
def dispatch(tmp_path: Path) -> Iterator[Dispatch]:
    with store_settings("sqlite", tmp_path) as settings:
        views = ViewDB(settings)
        try:
            yield Dispatch(AssignmentBoard(views, RowCipher([secrets.token_bytes(32)])))
        finally:
            views.close()


async def _listening(dispatch: Dispatch, seconds: float) -> list[tuple[float, float]]:
    """Run the listener for `seconds`; the listener rows as it stopped."""
    stop = asyncio.Event()
    task = asyncio.create_task(dispatch.listen(stop))
    await asyncio.sleep(seconds)
    rows = await asyncio.to_thread(dispatch.board.listeners.rows)
    stop.set()
    await task
    return rows


async def test_an_api_that_no_provider_reaches_stamps_nothing(dispatch: Dispatch) -> None:
    assert not dispatch.hearing()
    assert await _listening(dispatch, LISTEN_EVERY_S * 1.5) == []


async def test_a_provider_request_is_heard_for_a_moment(dispatch: Dispatch) -> None:
    dispatch.heard()
    assert dispatch.hearing()
    rows = await _listening(dispatch, 0.2)
    assert len(rows) == 1
    dispatch._last_heard -= HEARD_FOR_S + 0.1  # as if it came longer ago
    assert not dispatch.hearing()


async def test_an_open_poll_is_heard_while_it_waits_and_not_once_its_agent_is_gone(
        dispatch: Dispatch) -> None:
    gone = False

    async def is_gone() -> bool:
        return gone

    poll = asyncio.create_task(dispatch.next("p1", 30.0, is_gone))
    await asyncio.sleep(0.1)
    dispatch._last_heard -= 100.0  # its request came long ago: only the open poll hears
    assert dispatch.hearing()
    gone = True
    assert await asyncio.wait_for(poll, 5.0) == []
    assert not dispatch.hearing()  # a poll whose agent went is not heard


async def test_a_poll_answered_is_heard_until_the_next_comes(dispatch: Dispatch) -> None:
    dispatch._last_heard -= 100.0
    assert await dispatch.next("p1", 0.0) == []
    assert dispatch.hearing()


async def test_the_stamps_stop_while_no_one_is_heard_and_hearing_starts_afresh(
        dispatch: Dispatch) -> None:
    stop = asyncio.Event()
    gone = False

    async def is_gone() -> bool:
        return gone

    poll = asyncio.create_task(dispatch.next("p1", 30.0, is_gone))  # a provider waits here
    task = asyncio.create_task(dispatch.listen(stop))
    try:
        await asyncio.sleep(LISTEN_EVERY_S * 1.5)
        [(first_up, first_stamp)] = await asyncio.to_thread(dispatch.board.listeners.rows)
        gone = True  # its connection closed (the load balancer in front went down)
        await asyncio.wait_for(poll, 5.0)
        await asyncio.sleep(LISTEN_GAP_S + 2 * LISTEN_EVERY_S)
        [(up, stamp)] = await asyncio.to_thread(dispatch.board.listeners.rows)
        assert stamp - first_stamp < 2 * LISTEN_EVERY_S + 0.5  # no stamp once it was gone
        gone = False
        poll = asyncio.create_task(dispatch.next("p1", 30.0, is_gone))  # heard again
        await asyncio.sleep(LISTEN_EVERY_S * 1.5)
        [(up, stamp)] = await asyncio.to_thread(dispatch.board.listeners.rows)
        assert up > first_stamp + LISTEN_GAP_S  # counted from when it heard again
        assert stamp >= up
    finally:
        gone = True
        await asyncio.wait_for(poll, 5.0)
        stop.set()
        await task
    assert first_up <= first_stamp
