"""Matching: decide which GPUs a job gets, as a pure function of what is known.

Eligible: the provider is online with a fresh heartbeat, not excluded for this
job, offers the runtime the job needs (docker for an image, else process), has
enough free GPUs on one machine whose model contains the requested model
(case-insensitive, so "H100" matches "NVIDIA H100 80GB HBM3") and whose memory
is at least the minimum, at a price no higher than the job's maximum. Among
eligible providers the pick is the lowest price, then the highest reputation,
then the provider id (so the decision is reproducible).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def gb_to_mib(gb: int) -> int:
    """GPU memory is sold in decimal gigabytes: an "80 GB" H100 reports 81,559 MiB."""
    return -(-gb * 10**9 // 2**20)


@dataclass(frozen=True)
class Requirements:
    gpus: int
    gpu_model: str | None
    min_gpu_memory_mb: int
    max_price_per_gpu_hour_micro: int
    runtime: str = "process"
    # The queue's GPU classes: a GPU must match one of them (empty: any model).
    queue_models: tuple[str, ...] = ()
    region: str | None = None
    min_reputation: float = 0.0


@dataclass(frozen=True)
class Candidate:
    provider_id: str
    price_per_gpu_hour_micro: int
    reputation: float
    online: bool
    gpus: list[dict[str, Any]]
    free_gpu_indexes: list[int]
    runtimes: tuple[str, ...] = ("process",)
    region: str = ""


@dataclass(frozen=True)
class Decision:
    provider_id: str | None
    gpu_indexes: list[int] = field(default_factory=list)
    price_per_gpu_hour_micro: int = 0
    rejected: dict[str, str] = field(default_factory=dict)  # provider id -> why not


def _model_fits(wanted: str, model: str) -> bool:
    return wanted.lower() in model.lower()


def _matching_gpus(req: Requirements, gpus: list[dict[str, Any]]) -> list[int]:
    return [
        g["index"]
        for g in gpus
        if (req.gpu_model is None or _model_fits(req.gpu_model, str(g["model"])))
        and (not req.queue_models or any(_model_fits(m, str(g["model"])) for m in req.queue_models))
        and int(g["memory_mb"]) >= req.min_gpu_memory_mb
    ]


@dataclass(frozen=True)
class Assessment:
    """One provider, judged for one job: where it could run, or why not."""

    provider_id: str
    eligible: bool
    reason: str  # why not; "" when eligible
    gpu_indexes: list[int] = field(default_factory=list)
    price_per_gpu_hour_micro: int = 0
    reputation: float = 0.0


def assess(req: Requirements, c: Candidate, excluded: set[str]) -> Assessment:
    def no(reason: str) -> Assessment:
        return Assessment(c.provider_id, False, reason, [], c.price_per_gpu_hour_micro,
                          c.reputation)

    if c.provider_id in excluded:
        return no("excluded: lost while running this job")
    if not c.online:
        return no("offline")
    if req.region is not None and c.region != req.region:
        return no(f"in region {c.region}, not {req.region}")
    if req.runtime not in c.runtimes:
        return no(f"no {req.runtime} runtime")
    if c.price_per_gpu_hour_micro > req.max_price_per_gpu_hour_micro:
        return no("price above the job's maximum")
    if c.reputation < req.min_reputation:
        return no(f"reputation {c.reputation:.2f} below the job's minimum {req.min_reputation}")
    matching = _matching_gpus(req, c.gpus)
    if len(matching) < req.gpus:
        return no("no GPUs of the requested model and memory")
    free = set(c.free_gpu_indexes)
    fitting = [i for i in matching if i in free]
    if len(fitting) < req.gpus:
        return no("busy")
    return Assessment(c.provider_id, True, "", fitting[: req.gpus], c.price_per_gpu_hour_micro,
                      c.reputation)


def explain(req: Requirements, candidates: list[Candidate], excluded: set[str]) -> list[Assessment]:
    """Every provider judged: the eligible first, best first, then the others by id."""
    judged = [assess(req, c, excluded) for c in candidates]
    return sorted(judged, key=lambda a: (
        not a.eligible,
        a.price_per_gpu_hour_micro if a.eligible else 0,
        -a.reputation if a.eligible else 0.0,
        a.provider_id,
    ))


def decide(req: Requirements, candidates: list[Candidate], excluded: set[str]) -> Decision:
    judged = explain(req, candidates, excluded)
    rejected = {a.provider_id: a.reason for a in judged if not a.eligible}
    if not judged or not judged[0].eligible:
        return Decision(provider_id=None, rejected=rejected)
    best = judged[0]
    return Decision(best.provider_id, best.gpu_indexes, best.price_per_gpu_hour_micro, rejected)
