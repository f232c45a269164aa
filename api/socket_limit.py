"""A bound on the websockets one API process holds open.

Each open websocket costs the process about 35 KiB before it subscribes to anything
(README, Performance), and opening one needs no account: past
`max_websockets_per_process` a new one is closed before it is accepted, with code 1013
("try again later"), and those already open go on. Subscriptions are bounded again per
account and per process where they start (api/services.py `subscription_of`).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

TRY_AGAIN_LATER = 1013


class SocketLimit:
    def __init__(self, app: ASGIApp, max_websockets: int):
        self.app = app
        self.max_websockets = max_websockets
        self.open = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        if self.open >= self.max_websockets:
            message = await receive()  # websocket.connect, answered with a close
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": TRY_AGAIN_LATER,
                            "reason": f"this API holds its most, {self.max_websockets} "
                                      "websockets; try again in a while"})
            return
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1
