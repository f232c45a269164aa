"""Reputation is a documented function of a provider's recorded outcomes.

score = (successes + 1) / (successes + 1 + failures + 2*timeouts + 3*lost + 5*mismatches + 1)

A new provider starts at 0.5 (the +1 on each side is a uniform prior), each
success raises it, and faults weigh by how much they cost clients: a lost
provider wastes a whole attempt, a wrong result is the worst. Anyone holding the
event log can recompute it with this function.
"""

from __future__ import annotations

from collections.abc import Iterable

OUTCOMES = ("success", "failure", "timeout", "lost", "mismatch")
WEIGHTS = {"failure": 1, "timeout": 2, "lost": 3, "mismatch": 5}


def reputation_score(outcomes: Iterable[str]) -> float:
    good, bad = 1.0, 1.0
    for outcome in outcomes:
        if outcome == "success":
            good += 1
        else:
            bad += WEIGHTS[outcome]
    return good / (good + bad)
