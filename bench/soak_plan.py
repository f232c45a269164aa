"""The plan of `python -m bench soak`: which client submits which spec, which jobs are
cancelled when, and the providers they run on."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

MODELS = ("H100", "A100", "L4")
MAX_PRICE = "3"
CANCEL_SHARE = 0.15
# The API's states a cancel waits for (one of them, or a later one: bench/soak.py STEPS).
CANCEL_AT = ("QUEUED", "STAGING", "RUNNING", "UPLOADING", "VERIFYING", "SETTLING")
# kind -> weight; the spec of each is made by `spec_of`
KINDS = {"plain": 30, "single-provider": 20, "replicas-2": 12, "replicas-3": 12,
         "verifier": 12, "over-timeout": 6}


@dataclass
class Planned:
    n: int
    client: str
    kind: str
    spec: dict[str, Any]
    cancel_at: str | None  # cancelled once the API shows this state (or a later one)
    runs: int  # the executions the spec pays for (replicas, tie-break, verifier)


def spec_of(kind: str, n: int, rng: random.Random, seconds: float) -> tuple[dict[str, Any], int]:
    work = f"sleep {seconds:.2f}; echo job {n} > out.txt"
    spec: dict[str, Any] = {
        "name": f"soak-{n}", "command": work, "outputs": ["out.txt"],
        "max_price_per_gpu_hour": MAX_PRICE, "timeout": "30s",
    }
    runs = 1
    if kind == "single-provider":
        spec["resources"] = {"gpu_model": rng.choice(MODELS[1:])}
    elif kind == "replicas-2":
        spec["verification"] = {"replicas": 2}
        runs = 3  # a tie-break if the two disagree
    elif kind == "replicas-3":
        spec["verification"] = {"replicas": 3}
        runs = 3
    elif kind == "verifier":
        spec["verification"] = {"verifier": "grep -q job out.txt"}
        runs = 2
    elif kind == "over-timeout":
        spec["command"] = "sleep 60"
        spec["timeout"] = "3s"
        spec["outputs"] = []
    return spec, runs


def plan(jobs: int, clients: list[str], seed: int, cancel_share: float = CANCEL_SHARE,
         ) -> list[Planned]:
    rng = random.Random(seed)
    kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=jobs)
    planned = []
    for n, kind in enumerate(kinds):
        cancel = rng.choice(CANCEL_AT) if rng.random() < cancel_share else None
        # a cancelled job works longer, so that a cancel can meet it running
        seconds = rng.uniform(2.0, 5.0) if cancel else rng.uniform(0.2, 1.5)
        spec, runs = spec_of(kind, n, rng, seconds)
        planned.append(Planned(n, clients[n % len(clients)], kind, spec, cancel, runs))
    return planned


def providers_of(count: int) -> list[tuple[str, str, str]]:
    """(provider id, simulated GPUs, owner): count - 2 of H100, one of A100, one of L4; each
    with an owner of its own, but soak-h1 and soak-h2, which share one."""
    h100 = [(f"soak-h{i}", "2xH100:80", f"soak-owner{max(i, 2) - 1}")
            for i in range(1, count - 1)]
    return [*h100, ("soak-a100", "2xA100:80", f"soak-owner{count - 2}"),
            ("soak-l4", "2xL4:24", f"soak-owner{count - 1}")]
