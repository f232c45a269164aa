"""The graphql-transport-ws protocol for `jobEvents` and `jobLog`, as a small state machine.

Both clients drive the same session: it says what to send back and which event
arrived; the clients own the socket, the reconnects and the resume point.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from client import queries
from client._http import graphql_errors_text
from client.errors import ApiError
from client.models import JobEvent, JobLogChunk

SUBPROTOCOL = "graphql-transport-ws"
SUBSCRIPTION_ID = "1"
# Close codes that say "this request is wrong", not "the connection broke": don't retry.
FATAL_CLOSE_CODES = frozenset({4400, 4401, 4403, 4404, 4409, 4429})
RECONNECT_WINDOW_S = 60.0


@dataclass(frozen=True)
class Step:
    reply: str | None = None
    event: JobEvent | None = None
    chunk: JobLogChunk | None = None  # jobLog's
    done: bool = False


class JobEventsSession:
    """One connection's worth of protocol: init, ack, subscribe, next..., complete."""

    QUERY, FIELD = queries.JOB_EVENTS, "jobEvents"

    def __init__(self, token: str | None, job_id: str, after: int):
        self.token = token
        self.job_id = job_id
        self.after = after
        self.acked = False

    def init_message(self) -> str:
        payload = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return json.dumps({"type": "connection_init", "payload": payload})

    def subscribe_message(self) -> str:
        return json.dumps(
            {
                "id": SUBSCRIPTION_ID,
                "type": "subscribe",
                "payload": {
                    "query": self.QUERY,
                    "variables": {"jobId": self.job_id, "after": self.after},
                },
            }
        )

    def handle(self, raw: str | bytes) -> Step:
        try:
            msg: dict[str, Any] = json.loads(raw)
        except ValueError:
            raise ApiError(0, f"subscription: not a JSON message: {raw[:200]!r}") from None
        kind = msg.get("type")
        if kind == "connection_ack":
            self.acked = True
            return Step(reply=self.subscribe_message())
        if kind == "ping":
            return Step(reply=json.dumps({"type": "pong"}))
        if msg.get("id") not in (None, SUBSCRIPTION_ID):
            return Step()
        if kind == "next":
            payload = msg.get("payload") or {}
            if payload.get("errors"):
                raise ApiError(0, graphql_errors_text(payload["errors"]))
            event = (payload.get("data") or {}).get(self.FIELD)
            if event is None:
                return Step()
            return self.parse(event)
        if kind == "error":
            payload = msg.get("payload")
            errors = payload if isinstance(payload, list) else [payload]
            raise ApiError(0, graphql_errors_text(errors))
        if kind == "complete":
            return Step(done=True)
        return Step()  # pong and anything newer than us


    def parse(self, data: dict[str, Any]) -> Step:
        return Step(event=JobEvent.from_json(data))


class JobLogSession(JobEventsSession):
    """The same protocol for `jobLog`: the job's output, chunk by chunk."""

    QUERY, FIELD = queries.JOB_LOG, "jobLog"

    def parse(self, data: dict[str, Any]) -> Step:
        return Step(chunk=JobLogChunk.from_json(data))


def close_error(code: int | None, reason: str | None) -> ApiError | None:
    """An ApiError when the server closed for a reason that retrying won't fix."""
    if code in FATAL_CLOSE_CODES:
        return ApiError(code or 0, f"subscription refused: {reason or 'no reason given'}")
    return None


def backoff_s(failures: int) -> float:
    return float(min(0.25 * 2**failures, 5.0))
