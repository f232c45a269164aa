"""A queue's line: its waiting jobs in the order the scheduler takes them, and when each
would start (an estimate from the read model)."""

from __future__ import annotations

import heapq
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from domain.matching import Requirements
from domain.node import split_queue
from domain.scheduling import Waiting, fair_order
from domain.states import ACTIVE_STATES
from infra.settings import Settings
from readmodel.schema import ViewDB
from readmodel.telemetry import online_provider_ids

EXPECTED_START = (
    "An estimate, while QUEUED: when this job would start if every job ahead of it and every "
    "running job on the queue's GPUs ran its whole timeout (so usually later than it will). "
    "Null when the queue has too few usable GPUs for it."
)


def iso_time(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds")


@dataclass
class QueueLine:
    rows: list[dict[str, Any]]  # the waiting jobs, in the scheduler's order
    positions: dict[str, int]
    expected_start: dict[str, str | None]
    held: dict[str, int] = field(default_factory=dict)  # GPUs each client holds on the node
    max_gpus_per_client: int = 0


def _unix(at: str) -> float:
    return datetime.fromisoformat(at).timestamp()


def queue_line(views: ViewDB, settings: Settings, queue: str) -> QueueLine:
    """The queue's QUEUED jobs in `domain.scheduling.fair_order`, with the scheduler's inputs
    (priority, age, each client's GPUs held on the node) taken from the read model."""
    node_id, name = split_queue(queue)
    waiting = views.query(
        "SELECT job_id, client_id, name, spec, priority, gpus, timeout_s, attempt, submitted_at"
        " FROM jobs WHERE state = 'QUEUED' AND queue = ?", (f"{node_id}/{name}",),
    )
    nodes = views.query("SELECT queues, provider_ids FROM nodes WHERE node_id = ?", (node_id,))
    if not waiting or not nodes:
        return QueueLine(waiting, {}, {r["job_id"]: None for r in waiting})
    config = json.loads(nodes[0]["queues"]).get(name, {})
    members = set(json.loads(nodes[0]["provider_ids"]))
    providers = [p for p in views.query(
        "SELECT provider_id, status, gpus, reservations, reservation_clients, suspended,"
        " degraded FROM providers") if p["provider_id"] in members]
    held: dict[str, int] = {}
    for p in providers:
        clients = json.loads(p["reservation_clients"])
        for job, idx in json.loads(p["reservations"]).items():
            held[clients.get(job, "")] = held.get(clients.get(job, ""), 0) + len(idx)
    by_id = {r["job_id"]: r for r in waiting}
    entries = [
        Waiting(job_id=r["job_id"], attempt=r["attempt"], client_id=r["client_id"],
                priority=r["priority"], queued_at=_unix(r["submitted_at"]),
                req=Requirements(r["gpus"], None, 0, 0), queue=queue)
        for r in waiting
    ]
    ordered = [by_id[w.job_id] for w in fair_order(entries, held, config.get("fair_share", True))]
    running = views.query(
        "SELECT job_id, allocated_at, timeout_s FROM jobs WHERE allocated_at IS NOT NULL"
        f" AND state IN ({', '.join('?' * len(ACTIVE_STATES))})", ACTIVE_STATES,
    )
    online = online_provider_ids(views, settings)
    starts = estimate_starts(ordered, providers, config.get("gpu_models", []), running,
                             online, time.time())
    return QueueLine(ordered, {r["job_id"]: n for n, r in enumerate(ordered, start=1)}, starts,
                     held, int(config.get("max_gpus_per_client", 0)))


def estimate_starts(
    ordered: list[dict[str, Any]], providers: list[dict[str, Any]], models: list[str],
    running: list[dict[str, Any]], online: set[str], now: float,
) -> dict[str, str | None]:
    """See EXPECTED_START: the queue's usable GPUs (online provider, a model the queue serves,
    not suspended or degraded) as interchangeable slots, each free from now or from when
    the job holding it reaches its timeout; the waiting jobs take the earliest free slots
    in their order, each for its whole timeout. Ignores backfill, a job's own model and
    memory wishes and its replicas."""
    ends = {r["job_id"]: _unix(r["allocated_at"]) + r["timeout_s"] for r in running}
    free_at: list[float] = []
    for p in providers:
        if p["status"] != "online" or p["provider_id"] not in online:
            continue
        out = {str(i) for i in json.loads(p["suspended"])} | set(json.loads(p["degraded"]))
        busy = {i: job for job, idx in json.loads(p["reservations"]).items() for i in idx}
        for g in json.loads(p["gpus"]):
            model = str(g["model"]).lower()
            if str(g["index"]) in out or (models and not any(m.lower() in model for m in models)):
                continue
            job = busy.get(g["index"])
            free_at.append(max(now, ends.get(job, now)) if job else now)
    heapq.heapify(free_at)
    starts: dict[str, str | None] = {}
    for r in ordered:
        if r["gpus"] > len(free_at):
            starts[r["job_id"]] = None
            continue
        taken = [heapq.heappop(free_at) for _ in range(r["gpus"])]
        start = max(taken)
        for _ in taken:
            heapq.heappush(free_at, start + r["timeout_s"])
        starts[r["job_id"]] = iso_time(start)
    return starts
