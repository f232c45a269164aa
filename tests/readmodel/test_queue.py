"""Queue estimates (readmodel/queue.py): when each waiting job would start, from the
views' rows, as a pure function of them and the time."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from readmodel.queue import estimate_starts, iso_time

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC).timestamp()


def provider(pid: str, gpus: int, model: str = "H100", status: str = "online",
             reservations: dict[str, list[int]] | None = None,
             suspended: tuple[int, ...] = (),
             degraded: dict[str, str] | None = None) -> dict[str, Any]:
    return {"provider_id": pid, "status": status,
            "gpus": json.dumps([{"index": i, "model": model} for i in range(gpus)]),
            "reservations": json.dumps(reservations or {}),
            "suspended": json.dumps(list(suspended)), "degraded": json.dumps(degraded or {})}


def waiting(job_id: str, gpus: int = 1, timeout_s: int = 600) -> dict[str, Any]:
    return {"job_id": job_id, "gpus": gpus, "timeout_s": timeout_s}


def test_jobs_take_the_earliest_free_gpus_in_order_each_for_its_whole_timeout() -> None:
    running = [{"job_id": "busy", "allocated_at": iso_time(NOW - 100), "timeout_s": 400}]
    providers = [provider("p", 2, reservations={"busy": [0]})]
    starts = estimate_starts([waiting("a"), waiting("b"), waiting("c", gpus=2)], providers, [],
                             running, {"p"}, NOW)
    assert starts == {
        "a": iso_time(NOW),  # GPU 1 is free now
        "b": iso_time(NOW + 300),  # GPU 0 frees when "busy" reaches its timeout
        "c": iso_time(NOW + 900),  # both: after b's whole timeout on GPU 0
    }


def test_unusable_gpus_are_not_slots_and_a_job_too_big_gets_no_estimate() -> None:
    providers = [
        provider("off", 4, status="offline"),
        provider("silent", 4),  # online in the views, but no recent heartbeat
        provider("a100", 4, model="A100"),  # the queue serves H100s only
        provider("p", 3, suspended=(0,), degraded={"1": "Xid errors: 79"}),
    ]
    starts = estimate_starts([waiting("big", gpus=2), waiting("one")], providers, ["h100"], [],
                             {"off", "a100", "p"}, NOW)
    assert starts == {"big": None, "one": iso_time(NOW)}
