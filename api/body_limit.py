"""A size limit on every HTTP request body, enforced before the route reads it.

GraphQL, the REST heartbeat and every other JSON endpoint take at most
`max_request_bytes` (1 MiB: a job spec is a few KiB; GraphQL documents are bounded far
lower by their token limit, api/limits.py). A storage upload (`PUT /storage/...`) takes
at most `max_object_bytes`, and the client's quota bounds it again as it is stored
(infra/storage.py). A body announced larger (Content-Length) is refused with 413 before
a byte is read; one that streams past the limit (chunked) is refused with 413 too: small
bodies are read here in full up to the limit, uploads are counted as they stream into
storage (api/storage.py).
Websocket messages are bounded by the server (api/__main__.py, `ws_max_size`).
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def limit_text(limit: int) -> str:
    """1048576 as "1 MiB (1048576 bytes)"; a size that is no whole MiB in bytes only."""
    if limit % (1 << 20) == 0:
        return f"{limit // (1 << 20)} MiB ({limit} bytes)"
    return f"{limit} bytes"


class BodyLimit:
    def __init__(self, app: ASGIApp, max_request_bytes: int, max_object_bytes: int):
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.max_object_bytes = max_object_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "PUT" and scope["path"].startswith("/storage/")
        limit = self.max_object_bytes if upload else self.max_request_bytes
        what = "an upload" if upload else "a request body"
        most = ", the most one object may hold" if upload else ""
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                announced = int(length)
            except ValueError:
                await self.refuse(send, 400, "Content-Length is not a number")
                return
            if announced > limit:
                await self.refuse(send, 413, f"{what} may be at most {limit_text(limit)}"
                                             f"{most}; this one is {announced}")
                return
        if upload:  # counted as it streams into storage (api/storage.py)
            await self.app(scope, receive, send)
            return
        # Small bodies: read in full, up to the limit, then hand them on.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before its body was in
            size += len(message.get("body", b""))
            if size > limit:
                await self.refuse(send, 413, f"{what} may be at most {limit_text(limit)}")
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        await self.app(scope, self.replay(b"".join(chunks), receive), send)

    @staticmethod
    def replay(body: bytes, receive: Receive) -> Receive:
        sent = False

        async def again() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # http.disconnect, when the client goes

        return again

    @staticmethod
    async def refuse(send: Send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
