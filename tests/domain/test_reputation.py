"""Reputation: the documented formula, and the Provider aggregate that records outcomes.

score = (successes + 1) / (successes + 1 + failures + 2*timeouts + 3*lost + 5*mismatches + 1)
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest

from domain.application import Network
from domain.errors import DomainError
from domain.provider import Provider
from domain.reputation import OUTCOMES, WEIGHTS, reputation_score
from tests.domain.support import PRICE, gpu, notification_count, provider_event_types


def documented(successes: int, failures: int, timeouts: int, lost: int, mismatches: int) -> float:
    good = successes + 1
    bad = failures + 2 * timeouts + 3 * lost + 5 * mismatches + 1
    return float(Fraction(good, good + bad))


def test_new_provider_starts_at_one_half() -> None:
    assert reputation_score([]) == 0.5


def test_each_success_raises_the_score() -> None:
    scores = [reputation_score(["success"] * n) for n in range(6)]
    assert scores == [0.5, 2 / 3, 3 / 4, 4 / 5, 5 / 6, 6 / 7]
    assert scores == sorted(scores)
    assert all(a < b for a, b in itertools.pairwise(scores))


@pytest.mark.parametrize(
    ("outcome", "weight", "score"),
    [
        ("failure", 1, 1 / 3),
        ("timeout", 2, 1 / 4),
        ("lost", 3, 1 / 5),
        ("mismatch", 5, 1 / 7),
    ],
)
def test_each_fault_weight(outcome: str, weight: int, score: float) -> None:
    assert WEIGHTS[outcome] == weight
    assert reputation_score([outcome]) == pytest.approx(score, rel=1e-15)
    assert reputation_score(["success", outcome]) == pytest.approx(2 / (2 + 1 + weight))


def test_faults_order_by_cost_to_clients() -> None:
    scores = [reputation_score([o]) for o in ("failure", "timeout", "lost", "mismatch")]
    assert scores == sorted(scores, reverse=True)
    assert reputation_score(["success"]) > 0.5 > scores[0]


@pytest.mark.parametrize(
    "counts",
    [(0, 0, 0, 0, 0), (3, 0, 0, 0, 0), (2, 1, 1, 1, 1), (10, 0, 0, 0, 1), (0, 4, 0, 2, 0)],
)
def test_mixed_outcomes_follow_the_formula(counts: tuple[int, int, int, int, int]) -> None:
    outcomes = [o for o, n in zip(OUTCOMES, counts, strict=True) for _ in range(n)]
    assert reputation_score(outcomes) == pytest.approx(documented(*counts), rel=1e-12)
    assert reputation_score(reversed(outcomes)) == pytest.approx(documented(*counts), rel=1e-12)


def test_exact_mixed_value() -> None:
    # 2 successes, 1 failure, 1 mismatch: 3 / (3 + 1 + 5 + 1) = 0.3
    assert reputation_score(["success", "failure", "success", "mismatch"]) == pytest.approx(0.3)


def test_provider_aggregate_reputation() -> None:
    provider = Provider(provider_id="p", region="eu", price_per_gpu_hour_micro=PRICE, gpus=[gpu(0)])
    assert provider.reputation == 0.5
    provider.record_outcome("job-1", "success")
    provider.record_outcome("job-2", "timeout")
    assert provider.outcomes == ["success", "timeout"]
    assert provider.reputation == pytest.approx(2 / (2 + 2 + 1))


def test_one_outcome_per_job() -> None:
    provider = Provider(provider_id="p", region="eu", price_per_gpu_hour_micro=PRICE, gpus=[gpu(0)])
    provider.record_outcome("job-1", "success")
    provider.record_outcome("job-1", "mismatch")  # a retry with another view: ignored
    assert provider.outcomes == ["success"]
    assert provider.outcome_jobs == ["job-1"]


@pytest.mark.parametrize("outcome", ["great", "", "Success", "lost "])
def test_unknown_outcome_refused(outcome: str) -> None:
    provider = Provider(provider_id="p", region="eu", price_per_gpu_hour_micro=PRICE, gpus=[gpu(0)])
    with pytest.raises(DomainError) as info:
        provider.record_outcome("job-1", outcome)
    assert str(info.value) == (
        f"unknown outcome {outcome!r}; one of success, failure, timeout, lost, mismatch"
    )
    assert provider.outcomes == []
    assert provider.reputation == 0.5


def test_reputation_through_the_app(app: Network) -> None:
    app.register_provider("p", "eu", PRICE, [gpu(0)])
    app.record_reputation("job-1", "p", "success")
    app.record_reputation("job-1", "p", "success")
    app.record_reputation("job-2", "p", "lost")
    provider = app.provider("p")
    assert provider.outcomes == ["success", "lost"]
    assert provider.reputation == pytest.approx(2 / (2 + 3 + 1))
    assert provider_event_types(app, "p").count("ReputationRecorded") == 2
    count = notification_count(app)
    with pytest.raises(DomainError, match="unknown outcome 'meh'"):
        app.record_reputation("job-3", "p", "meh")
    assert notification_count(app) == count
