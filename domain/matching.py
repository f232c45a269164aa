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


@dataclass(frozen=True)
class Candidate:
    provider_id: str
    price_per_gpu_hour_micro: int
    reputation: float
    online: bool
    gpus: list[dict[str, Any]]
    free_gpu_indexes: list[int]
    runtimes: tuple[str, ...] = ("process",)


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


def decide(req: Requirements, candidates: list[Candidate], excluded: set[str]) -> Decision:
    rejected: dict[str, str] = {}
    eligible: list[tuple[int, float, str, list[int]]] = []
    for c in candidates:
        if c.provider_id in excluded:
            rejected[c.provider_id] = "excluded: lost while running this job"
        elif not c.online:
            rejected[c.provider_id] = "offline"
        elif req.runtime not in c.runtimes:
            rejected[c.provider_id] = f"no {req.runtime} runtime"
        elif c.price_per_gpu_hour_micro > req.max_price_per_gpu_hour_micro:
            rejected[c.provider_id] = "price above the job's maximum"
        else:
            matching = _matching_gpus(req, c.gpus)
            free = set(c.free_gpu_indexes)
            fitting = [i for i in matching if i in free]
            if len(fitting) >= req.gpus:
                eligible.append(
                    (c.price_per_gpu_hour_micro, -c.reputation, c.provider_id, fitting[: req.gpus])
                )
            elif len(matching) >= req.gpus:
                rejected[c.provider_id] = "busy"
            else:
                rejected[c.provider_id] = "no GPUs of the requested model and memory"
    if not eligible:
        return Decision(provider_id=None, rejected=rejected)
    eligible.sort()
    price, _, provider_id, gpu_indexes = eligible[0]
    return Decision(provider_id, gpu_indexes, price, rejected)
