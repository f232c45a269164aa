"""The agent's step context sends its job's output one chunk per heartbeat, early while
output waits, all of it before the result, and keeps at most MAX_PENDING_LOG_BYTES when
the API is away (a unit test: the API here records what it is sent)."""

from __future__ import annotations

import threading
import time
from typing import Any

from worker_gpu.api_client import ApiRejected, ApiUnreachable
from worker_gpu.assignments import MAX_PENDING_LOG_BYTES, ApiStepContext
from worker_gpu.joblog import LogChunk


class RecordingApi:
    def __init__(self) -> None:
        self.sent: list[tuple[float, dict[str, Any] | None]] = []
        self.down = threading.Event()

    def assignment_heartbeat(self, provider_id: str, aid: str, details: Any,
                             timeout_s: float | None = None,
                             log: dict[str, Any] | None = None) -> bool:
        if self.down.is_set():
            raise ApiUnreachable("down")
        self.sent.append((time.monotonic(), log))
        return False


def chunk(offset: int, text: str) -> LogChunk:
    return LogChunk(offset, len(text), text)


def test_output_goes_early_one_chunk_a_beat_and_all_before_the_result() -> None:
    api = RecordingApi()
    ctx = ApiStepContext(api, "p1", "a1", heartbeat_timeout_s=30).start()  # beats every 10 s
    try:
        time.sleep(0.2)
        ctx.log([chunk(0, "one\n")])
        time.sleep(1.5)  # not 10 s: output brings the beat forward
        logs = [log for _, log in api.sent if log is not None]
        assert logs == [{"offset": 0, "bytes": 4, "text": "one\n"}]
        ctx.log([chunk(4, "two\n"), chunk(8, "three\n")])
        started = time.monotonic()
        ctx.drain_log()
        assert time.monotonic() - started < 2
        logs = [log for _, log in api.sent if log is not None]
        assert [entry["offset"] for entry in logs] == [0, 4, 8]
    finally:
        ctx.stop()


def test_while_the_api_is_away_the_oldest_output_goes_first() -> None:
    api = RecordingApi()
    api.down.set()
    ctx = ApiStepContext(api, "p1", "a1", heartbeat_timeout_s=30).start()
    try:
        size = 16 << 10
        ctx.log([chunk(i * size, "x" * size) for i in range(MAX_PENDING_LOG_BYTES // size + 4)])
        api.down.clear()
        ctx.drain_log(timeout_s=20)
        offsets = [log["offset"] for _, log in api.sent if log is not None]
        assert len(offsets) == MAX_PENDING_LOG_BYTES // size
        assert offsets[0] == 4 * size and offsets == sorted(offsets)
    finally:
        ctx.stop()


class RefusingApi(RecordingApi):
    def assignment_heartbeat(self, provider_id: str, aid: str, details: Any,
                             timeout_s: float | None = None,
                             log: dict[str, Any] | None = None) -> bool:
        raise ApiRejected("HTTP 404: no such assignment", 404)


def cancelled_after(ctx: ApiStepContext, within_s: float) -> float | None:
    """Seconds until the context cancelled its step, or None within `within_s`."""
    began = time.monotonic()
    ctx.start()
    try:
        while time.monotonic() - began < within_s:
            if ctx.is_cancelled():
                return time.monotonic() - began
            time.sleep(0.05)
        return None
    finally:
        ctx.stop()


def test_an_api_away_is_borne_for_the_outage_grace_a_refusal_only_for_the_timeout() -> None:
    """Unreachable, the API may be restarting: the run goes on until the network itself
    would give it up (heartbeat timeout plus outage grace). Refused, the network has
    answered: the run stops after the heartbeat timeout."""
    away = RecordingApi()
    away.down.set()
    gone = cancelled_after(ApiStepContext(away, "p1", "a1", heartbeat_timeout_s=0.6,
                                          give_up_after_s=2.5), within_s=6)
    assert gone is not None and 2.5 <= gone < 4.5, gone
    refused = cancelled_after(ApiStepContext(RefusingApi(), "p1", "a1", heartbeat_timeout_s=0.6,
                                             give_up_after_s=2.5), within_s=6)
    assert refused is not None and 0.6 <= refused < 2.0, refused
