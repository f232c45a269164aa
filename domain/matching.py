"""Matching: decide which GPUs a job gets, as a pure function of what is known.

Eligible: the provider is online with a fresh heartbeat, not excluded for this
job, offers the runtime the job needs (docker for an image, else process), has
enough free GPUs on one machine whose model contains the requested model
(case-insensitive, so "H100" matches "NVIDIA H100 80GB HBM3") and whose memory
is at least the minimum, at a price no higher than the job's maximum, with
at least the job's minimum reputation; suspended and degraded GPUs are never
free. Among eligible providers the pick is the lowest score (then the provider
id, so the decision is reproducible):

    score = 0.5 * price / max_price            (cheaper is better)
          + 0.3 * (1 - reputation)             (more trusted is better)
          + 0.1 * (0 if in the node's region else 1)   (locality)
          + 0.1 * busy GPUs / all GPUs         (spread the load)

each term in [0, 1], so a provider at half the job's maximum price beats one at
full price unless its reputation is about 0.8 lower.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

# The providers' sandboxes (domain/provider.py SANDBOXES) that hold each job in control
# groups of its own: what a job's `isolation: full` asks for.
FULL_ISOLATION = frozenset({"bwrap", "docker"})


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
    isolation: str = "any"  # "full": FULL_ISOLATION sandboxes only


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
    suspended: tuple[int, ...] = ()
    degraded: Mapping[int, str] = field(default_factory=dict)  # GPU index -> why
    sandbox: str = ""  # as its agent declared it ("": an agent from before sandboxes)
    # (its latest success, its `lost` runs since): whether it rests (domain/resting.py)
    streak: tuple[float, tuple[float, ...]] = (0.0, ())


def isolates(req: Requirements, c: Candidate) -> bool:
    """The provider's sandbox gives the job the isolation it asks for."""
    return req.isolation != "full" or c.sandbox in FULL_ISOLATION


def _what_it_is(req: Requirements, c: Candidate) -> list[str]:
    """Why the provider, as it is (its region, runtimes, sandbox), cannot take the job."""
    reasons = []
    if req.region is not None and c.region != req.region:
        reasons.append(f"in region {c.region}, not {req.region}")
    if req.runtime not in c.runtimes:
        reasons.append(f"no {req.runtime} runtime")
    if not isolates(req, c):
        reasons.append(f"sandbox {c.sandbox or 'undeclared'} does not hold each job in "
                       "control groups of its own (the job asks for isolation: full)")
    return reasons


@dataclass(frozen=True)
class Decision:
    provider_id: str | None
    gpu_indexes: list[int] = field(default_factory=list)
    price_per_gpu_hour_micro: int = 0
    rejected: dict[str, str] = field(default_factory=dict)  # provider id -> why not


def _model_fits(wanted: str, model: str) -> bool:
    return wanted.lower() in model.lower()


def gpu_fits(req: Requirements, model: str, memory_mb: int) -> bool:
    """One GPU of this model and memory meets the job's model, queue and memory needs."""
    return (
        (req.gpu_model is None or _model_fits(req.gpu_model, model))
        and (not req.queue_models or any(_model_fits(m, model) for m in req.queue_models))
        and memory_mb >= req.min_gpu_memory_mb
    )


def _matching_gpus(req: Requirements, gpus: list[dict[str, Any]]) -> list[int]:
    return [g["index"] for g in gpus if gpu_fits(req, str(g["model"]), int(g["memory_mb"]))]


PRICE_WEIGHT, REPUTATION_WEIGHT, LOCALITY_WEIGHT, LOAD_WEIGHT = 0.5, 0.3, 0.1, 0.1


def score(req: Requirements, c: Candidate, home_region: str = "") -> float:
    """Lower is better; see the module docstring."""
    price = c.price_per_gpu_hour_micro / max(1, req.max_price_per_gpu_hour_micro)
    remote = 0.0 if not home_region or c.region == home_region else 1.0
    busy = 1.0 - len(c.free_gpu_indexes) / len(c.gpus) if c.gpus else 1.0
    return round(
        PRICE_WEIGHT * min(price, 1.0) + REPUTATION_WEIGHT * (1.0 - c.reputation)
        + LOCALITY_WEIGHT * remote + LOAD_WEIGHT * busy,
        9,
    )


@dataclass(frozen=True)
class Assessment:
    """One provider, judged for one job: where it could run, or why not."""

    provider_id: str
    eligible: bool
    reason: str  # why not; "" when eligible
    gpu_indexes: list[int] = field(default_factory=list)
    price_per_gpu_hour_micro: int = 0
    reputation: float = 0.0
    score: float = 0.0
    # When the provider's rest is over (domain/resting.py): until then, placed only where
    # no provider that does not rest fits. 0.0: it does not rest.
    resting_until: float = 0.0


def assess(
    req: Requirements, c: Candidate, excluded: set[str], home_region: str = ""
) -> Assessment:
    points = score(req, c, home_region)

    def no(reason: str) -> Assessment:
        return Assessment(c.provider_id, False, reason, [], c.price_per_gpu_hour_micro,
                          c.reputation, points)

    # Every reason, not only the first: a person fixing their spec (or their offer) should
    # see all that stands in the way at once.
    reasons = _provider_reasons(req, c, excluded)
    matching = _matching_gpus(req, c.gpus)
    if len(matching) < req.gpus:
        reasons.append("no GPUs of the requested model and memory")
    elif c.online and c.provider_id not in excluded:  # an offline one's GPUs say nothing
        free = set(c.free_gpu_indexes)
        fitting = [i for i in matching if i in free]
        if len(fitting) < req.gpus:
            held = set(matching) & (set(c.suspended) | set(c.degraded))
            if len(matching) - len(held) < req.gpus:
                if set(matching) & set(c.degraded):
                    reasons.append("degraded: " + "; ".join(
                        f"GPU {i} {c.degraded[i]}"
                        for i in sorted(set(matching) & set(c.degraded))))
                else:
                    reasons.append("suspended")
            else:
                reasons.append("busy")
    if reasons:
        return no("; ".join(reasons))
    fitting = [i for i in matching if i in set(c.free_gpu_indexes)]
    return Assessment(c.provider_id, True, "", fitting[: req.gpus], c.price_per_gpu_hour_micro,
                      c.reputation, points)


def _provider_reasons(req: Requirements, c: Candidate, excluded: set[str]) -> list[str]:
    """Every reason none of this provider's GPUs can take the job, whatever the GPUs."""
    reasons = []
    if c.provider_id in excluded:
        reasons.append("excluded: lost while running this job")
    if not c.online:
        reasons.append("offline")
    reasons += _what_it_is(req, c)
    if c.price_per_gpu_hour_micro > req.max_price_per_gpu_hour_micro:
        reasons.append("price above the job's maximum")
    if c.reputation < req.min_reputation:
        reasons.append(
            f"reputation {c.reputation:.2f} below the job's minimum {req.min_reputation}")
    return reasons


def never_fits(req: Requirements, c: Candidate) -> list[str]:
    """Every reason this provider could never take the job, whatever it is doing: what it
    is (its region, runtimes, its GPUs' models and memory, how many fit on the machine),
    not its state (offline, busy, suspended, degraded) nor what it may change (price) or
    earn (reputation)."""
    reasons = _what_it_is(req, c)
    matching = _matching_gpus(req, c.gpus)
    if len(matching) < req.gpus:
        reasons.append(f"{len(matching)} of its {len(c.gpus)} GPUs fit the job's model and "
                       f"memory, {req.gpus} needed on one machine")
    return reasons


NEVER_SHOWN = 5  # providers named in a notice; the rest are counted


def unsatisfiable(req: Requirements, candidates: list[Candidate], node_id: str) -> str | None:
    """Why no provider registered on the node could ever run the job, in words (None when
    one could, online or not). A notice, not a refusal: a provider that fits may register
    later, and the job then runs; it says so now rather than waiting in silence."""
    wanted = [f"{req.gpus} GPU{'s' if req.gpus > 1 else ''} on one machine"]
    if req.gpu_model:
        wanted.append(f"of model {req.gpu_model}")
    if req.queue_models:
        wanted.append(f"of a model its queue serves ({', '.join(req.queue_models)})")
    if req.min_gpu_memory_mb:
        wanted.append(f"with at least {req.min_gpu_memory_mb} MiB each")
    if req.region is not None:
        wanted.append(f"in region {req.region}")
    wanted.append(f"with the {req.runtime} runtime")
    needs = " ".join(wanted)
    if not candidates:
        return (f"no provider has joined node {node_id} yet: the job waits until one that "
                f"has {needs} does")
    judged = sorted((c.provider_id, never_fits(req, c)) for c in candidates)
    if any(not reasons for _, reasons in judged):
        return None
    named = "; ".join(f"{pid}: {', '.join(reasons)}" for pid, reasons in judged[:NEVER_SHOWN])
    more = len(judged) - NEVER_SHOWN
    return (f"no provider of node {node_id} could ever run this job as specified: it needs "
            f"{needs} ({named}{f'; and {more} more' if more > 0 else ''}); it waits until "
            "such a provider joins")


def _provider_reason(req: Requirements, c: Candidate, excluded: set[str]) -> str:
    """Why none of this provider's GPUs can take the job, every reason; "" if none."""
    return "; ".join(_provider_reasons(req, c, excluded))


def explain(
    req: Requirements, candidates: list[Candidate], excluded: set[str], home_region: str = "",
    resting: Mapping[str, float] | None = None,
) -> list[Assessment]:
    """Every provider judged: the eligible first, best score first (those that rest, by
    `resting`: provider id -> when its rest is over, after the others), then the others by
    id."""
    rests = resting or {}
    judged = [assess(req, c, excluded, home_region) for c in candidates]
    judged = [replace(a, resting_until=rests[a.provider_id])
              if a.eligible and a.provider_id in rests else a for a in judged]
    return sorted(judged, key=lambda a: (
        not a.eligible,
        a.resting_until > 0,
        a.score if a.eligible else 0.0,
        a.provider_id,
    ))


def decide(
    req: Requirements, candidates: list[Candidate], excluded: set[str], home_region: str = ""
) -> Decision:
    judged = explain(req, candidates, excluded, home_region)
    rejected = {a.provider_id: a.reason for a in judged if not a.eligible}
    if not judged or not judged[0].eligible:
        return Decision(provider_id=None, rejected=rejected)
    best = judged[0]
    return Decision(best.provider_id, best.gpu_indexes, best.price_per_gpu_hour_micro, rejected)


@dataclass(frozen=True)
class GpuAssessment:
    """One GPU, judged for one job: could it be among the job's GPUs now, or why not."""

    provider_id: str
    index: int
    model: str
    memory_mb: int
    eligible: bool
    reason: str  # why not; "" when eligible
    price_per_gpu_hour_micro: int
    reputation: float
    score: float


def explain_gpus(
    req: Requirements, candidates: list[Candidate], excluded: set[str], home_region: str = ""
) -> list[GpuAssessment]:
    """Every GPU of every provider judged: the eligible first (best score first).

    A provider-wide reason (offline, region, runtime, price, reputation, excluded) applies
    to each of its GPUs; then each GPU's own: model, memory, suspended, degraded, busy; and
    a GPU that fits on a machine without enough other fitting free GPUs says so.
    """
    rows: list[GpuAssessment] = []
    for c in candidates:
        points = score(req, c, home_region)
        whole = _provider_reason(req, c, excluded)
        fitting_free = [
            g["index"] for g in c.gpus
            if g["index"] in set(c.free_gpu_indexes) and _matching_gpus(req, [g])
        ]
        for g in c.gpus:
            index = int(g["index"])
            own = _gpu_reasons(req, c, g)
            if not c.online or c.provider_id in excluded:  # its GPUs' state says nothing
                own = [r for r in own if r not in ("busy", "suspended")
                       and not r.startswith("degraded")]
            reason = "; ".join([whole] * bool(whole) + own)
            if not reason and len(fitting_free) < req.gpus:
                reason = (f"the job needs {req.gpus} GPUs on one machine; "
                          f"{len(fitting_free)} fit and are free here")
            rows.append(GpuAssessment(
                c.provider_id, index, str(g["model"]), int(g["memory_mb"]), not reason, reason,
                c.price_per_gpu_hour_micro, c.reputation, points,
            ))
    return sorted(rows, key=lambda r: (not r.eligible, r.score if r.eligible else 0.0,
                                       r.provider_id, r.index))


def _gpu_reasons(req: Requirements, c: Candidate, g: dict[str, Any]) -> list[str]:
    """Every reason this GPU cannot be among the job's: what it is, then its state."""
    model = str(g["model"])
    index = int(g["index"])
    reasons = []
    if req.gpu_model is not None and not _model_fits(req.gpu_model, model):
        reasons.append(f"model {model} is not {req.gpu_model}")
    if req.queue_models and not any(_model_fits(m, model) for m in req.queue_models):
        reasons.append(
            f"model {model} is not served by this queue ({', '.join(req.queue_models)})")
    if int(g["memory_mb"]) < req.min_gpu_memory_mb:
        reasons.append(f"memory {g['memory_mb']} MiB below the job's {req.min_gpu_memory_mb} MiB")
    if index in c.suspended:
        reasons.append("suspended")
    elif index in c.degraded:
        reasons.append(f"degraded: {c.degraded[index]}")
    elif index not in c.free_gpu_indexes:
        reasons.append("busy")
    return reasons
