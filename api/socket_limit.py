"""A bound on the websockets one API process holds open, in all and from one address.

Each open websocket costs the process about 35 KiB before it subscribes to anything
(README, Performance), and opening one needs no account: past
`max_websockets_per_process` in all, or `max_websockets_per_address` from one source
address (as the socket sees it: behind a proxy, the proxy's), a new one is closed before
it is accepted, with code 1013 ("try again later"), and those already open go on. So one
machine holding sockets open cannot fill the process's bound for everyone else.
Subscriptions are bounded again per account and per process where they start
(api/services.py `subscription_of`).
"""

from __future__ import annotations

from collections import Counter

from starlette.types import ASGIApp, Receive, Scope, Send

TRY_AGAIN_LATER = 1013


class SocketLimit:
    def __init__(self, app: ASGIApp, max_websockets: int, max_per_address: int):
        self.app = app
        self.max_websockets, self.max_per_address = max_websockets, max_per_address
        self.open = 0
        self.by_address: Counter[str] = Counter()

    def _refusal(self, address: str) -> str | None:
        if self.open >= self.max_websockets:
            return f"this API holds its most, {self.max_websockets} websockets"
        if self.by_address[address] >= self.max_per_address:
            return f"at most {self.max_per_address} websockets from one address"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = str(client[0]) if client else ""
        refusal = self._refusal(address)
        if refusal is not None:
            message = await receive()  # websocket.connect, answered with a close
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": TRY_AGAIN_LATER,
                            "reason": f"{refusal}; try again in a while"})
            return
        self.open += 1
        self.by_address[address] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1
            self.by_address[address] -= 1
            if not self.by_address[address]:
                del self.by_address[address]
