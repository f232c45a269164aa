"""Reputation is a documented function of a provider's recorded outcomes and their times.

Each outcome (a ReputationRecorded event) counts with a weight that halves every
HALF_LIFE_DAYS of age, so recent behaviour matters most and old faults fade:

    w(outcome) = 0.5 ** (age_days / HALF_LIFE_DAYS)
    good = 1 + sum of w over successes
    bad  = 1 + sum of w * (1 failure, 2 timeout, 3 lost, 5 mismatch)
    score = good / (good + bad)

A new provider starts at 0.5 (the 1 on each side is a uniform prior), each
success raises it, and faults weigh by how much they cost clients: a lost
provider wastes a whole attempt, a wrong result is the worst.

An `outvoted` outcome (a run that a majority of other owners' runs disagreed
with, its report not contradicted by storage: workflows/runs.py) is recorded
but not scored: a client's command can choose which answer each run gives, so
a majority is no evidence against a provider. It counts nowhere here (score,
confidence, probation, the outcome count); it puts the provider back on
probation for the check rate instead (domain/verification.py `check_rate`).

Confidence grows with history: with n = the sum of all weights (the effective
number of outcomes), confidence = n / (n + CONFIDENCE_HALF), 0 for a new
provider and 0.5 after CONFIDENCE_HALF recent outcomes. A provider with fewer
than PROBATION (scored) outcomes is on probation: every one of its results is checked
(domain/verification.py).

Anyone holding the event log can recompute every score with `reputation`
(`gpgpu admin recompute-reputation` does, and compares with the stored ones).
`reputation_score` is the same formula without time (every weight 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

OUTCOMES = ("success", "failure", "timeout", "lost", "mismatch", "outvoted")
WEIGHTS = {"failure": 1, "timeout": 2, "lost": 3, "mismatch": 5}
# Recorded, shown, and used by the check rate, but never in the score.
UNSCORED = ("outvoted",)
HALF_LIFE_DAYS = 30.0
CONFIDENCE_HALF = 10.0
PROBATION = 5
DAY_S = 86_400.0


def reputation_score(outcomes: Iterable[str]) -> float:
    good, bad = 1.0, 1.0
    for outcome in outcomes:
        if outcome in UNSCORED:
            continue
        if outcome == "success":
            good += 1
        else:
            bad += WEIGHTS[outcome]
    return good / (good + bad)


@dataclass(frozen=True)
class Reputation:
    """A provider's score and what it is made of, as of one moment."""

    score: float
    confidence: float
    probation: bool
    outcomes: int  # scored outcomes, all time
    effective_outcomes: float  # their weights summed (time decay)
    weighted: dict[str, float]  # outcome -> its decayed count (`outvoted` too, unscored)


def reputation(outcomes: Sequence[tuple[str, float]], as_of: float) -> Reputation:
    """The documented score of (outcome, unix time) pairs, as of `as_of` (unix time).

    An outcome stamped after `as_of` (clocks of two machines differ) counts as new.
    An unscored outcome (`outvoted`) changes nothing but its own entry in `weighted`.
    """
    weighted = dict.fromkeys(OUTCOMES, 0.0)
    for outcome, at in outcomes:
        age_days = max(0.0, as_of - at) / DAY_S
        weighted[outcome] += math.pow(0.5, age_days / HALF_LIFE_DAYS)
    good = 1.0 + weighted["success"]
    bad = 1.0 + sum(WEIGHTS[o] * w for o, w in weighted.items() if o in WEIGHTS)
    effective = sum(w for o, w in weighted.items() if o not in UNSCORED)
    scored = sum(1 for o, _ in outcomes if o not in UNSCORED)
    return Reputation(
        score=good / (good + bad),
        confidence=effective / (effective + CONFIDENCE_HALF),
        probation=scored < PROBATION,
        outcomes=scored,
        effective_outcomes=effective,
        weighted=weighted,
    )


def last_scored_at(outcomes: Sequence[tuple[str, float]], default: float) -> float:
    """The time of the latest scored outcome (`default` if none): the moment the read
    model's stored score is taken as of, so that an unscored outcome does not move it."""
    return max((at for o, at in outcomes if o not in UNSCORED), default=default)
