"""api/socket_limit.py: websockets are bounded in all and per source address, so that one
machine holding sockets open (no account needed) cannot fill a process's bound for everyone.
The same against a real API: tests/liveness/test_subscriptions_end.py."""

from __future__ import annotations

import asyncio
from typing import Any

from api.socket_limit import TRY_AGAIN_LATER, SocketLimit


async def scenario(per_process: int, per_address: int, addresses: list[str]
                   ) -> list[dict[str, Any] | None]:
    """Open a websocket from each address in turn, each held open by the app until the end;
    what each was answered before it was accepted (None: let through)."""
    release = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()

    limit = SocketLimit(app, max_websockets=per_process, max_per_address=per_address)
    answers: list[dict[str, Any] | None] = []
    held = []
    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    def sender(sent: list[Any]) -> Any:
        async def send(message: Any) -> None:
            sent.append(message)
        return send

    for address in addresses:
        sent: list[Any] = []
        task = asyncio.create_task(limit({"type": "websocket", "client": (address, 1)},
                                         receive, sender(sent)))
        await asyncio.sleep(0.01)
        answers.append(sent[0] if sent else None)
        held.append(task)
    release.set()
    await asyncio.gather(*held)
    assert limit.open == 0 and not limit.by_address
    return answers


def test_one_address_holds_at_most_its_share_and_others_still_get_in() -> None:
    answers = asyncio.run(scenario(10, 2, ["a", "a", "a", "b", "b", "c"]))
    assert [a is None for a in answers] == [True, True, False, True, True, True]
    refused = answers[2]
    assert refused is not None and refused["code"] == TRY_AGAIN_LATER
    assert refused["reason"] == "at most 2 websockets from one address; try again in a while"


def test_the_process_bound_holds_whoever_opens_them() -> None:
    answers = asyncio.run(scenario(3, 5, ["a", "b", "c", "d"]))
    assert [a is None for a in answers] == [True, True, True, False]
    assert answers[3] is not None and answers[3]["reason"].startswith(
        "this API holds its most, 3 websockets")
