"""Reputation: the documented formula, and the Provider aggregate that records outcomes.

score = (successes + 1) / (successes + 1 + failures + 2*timeouts + 3*lost + 5*mismatches + 1),
an `outvoted` counting as a failure only once the jobs of 3 distinct clients outvoted the
provider within 30 days (and once a client a window).
"""

from __future__ import annotations

import itertools
import json
from fractions import Fraction
from typing import Any

import pytest

from domain.application import Network
from domain.errors import DomainError
from domain.ledger import Account, client_account
from domain.limits import MAX_OUTVOTES, MAX_SPENT_MICRO
from domain.provider import Provider
from domain.reputation import (
    OUTCOMES,
    OUTVOTED_CLIENTS,
    OUTVOTED_MIN_SPENT_MICRO,
    OUTVOTED_SCORED,
    OUTVOTED_WEIGHT,
    OUTVOTED_WINDOW_DAYS,
    PROBATION,
    WEIGHTS,
    counted_outvoted,
    last_scored_at,
    outvoted_price_micro,
    reputation,
    reputation_score,
)
from infra.settings import Settings
from ops.admin import recompute_reputation
from readmodel.projector import Projector
from readmodel.schema import ViewDB
from tests.domain.support import (
    FEE_BPS,
    PRICE,
    START,
    STEPS,
    all_events,
    gpu,
    make_spec,
    notification_count,
    provider_event_types,
    step_data,
)


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
    scored = [o for o in OUTCOMES if o != "outvoted"]
    outcomes = [o for o, n in zip(scored, counts, strict=True) for _ in range(n)]
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
        f"unknown outcome {outcome!r}; one of success, failure, timeout, lost, mismatch, outvoted"
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


def test_an_outvoted_run_is_recorded_but_changes_no_figure_of_the_score() -> None:
    """A majority of the client's command is no evidence against a provider
    (workflows/runs.py `outvoted`): the outcome is kept (it raises the check rate,
    tests/domain/test_verification.py) but the score anyone recomputes is as without it,
    where no client is known (or one alone outvoted it: the tests below)."""
    assert "outvoted" in OUTCOMES and "outvoted" not in WEIGHTS
    history = ["success", "success", "failure", "success"]
    assert reputation_score([*history, "outvoted", "outvoted"]) == reputation_score(history)
    assert reputation_score(["outvoted"] * 10) == 0.5
    pairs = [(o, i * DAY) for i, o in enumerate(history)]
    with_outvoted = [*pairs, ("outvoted", 4 * DAY), ("outvoted", 9 * DAY)]
    for as_of in (4 * DAY, 40 * DAY):
        before, after = reputation(pairs, as_of), reputation(with_outvoted, as_of)
        assert (after.score, after.confidence, after.probation, after.outcomes,
                after.effective_outcomes) == (before.score, before.confidence,
                                              before.probation, before.outcomes,
                                              before.effective_outcomes)
        assert after.weighted["outvoted"] > 0 == before.weighted["outvoted"]
    # on probation by scored outcomes only: five outvoted runs do not end it
    assert reputation([("outvoted", 0.0)] * PROBATION, 0.0).probation
    # the read model's score is taken as of the latest scored outcome, not an outvoted one
    assert last_scored_at(with_outvoted, 0.0) == 3 * DAY
    assert last_scored_at([("outvoted", 5.0)], 0.0) == 0.0
    provider = Provider(provider_id="p", region="eu", price_per_gpu_hour_micro=PRICE, gpus=[gpu(0)])
    provider.record_outcome("job-1", "success")
    score = provider.reputation
    provider.record_outcome("job-2", "outvoted")
    assert provider.outcomes == ["success", "outvoted"]
    assert provider.reputation == pytest.approx(score)


# Time decay, confidence and probation

DAY = 86_400.0


def test_an_outcome_weighs_half_after_one_half_life() -> None:
    from domain.reputation import HALF_LIFE_DAYS, reputation

    fresh = reputation([("lost", 0.0)], as_of=0.0)
    aged = reputation([("lost", 0.0)], as_of=HALF_LIFE_DAYS * DAY)
    assert fresh.weighted["lost"] == 1.0 and aged.weighted["lost"] == pytest.approx(0.5)
    assert fresh.score == pytest.approx(1 / (1 + 1 + 3))
    assert aged.score == pytest.approx(1 / (1 + 1 + 1.5))


def test_old_faults_fade_so_recent_work_counts_most() -> None:
    from domain.reputation import reputation

    old_faults = [("mismatch", 0.0)] * 3 + [("success", 200 * DAY)] * 10
    new_faults = [("success", 0.0)] * 10 + [("mismatch", 200 * DAY)] * 3
    assert reputation(old_faults, as_of=200 * DAY).score > 0.9
    assert reputation(new_faults, as_of=200 * DAY).score < 0.1


def test_without_new_outcomes_a_score_drifts_back_towards_one_half() -> None:
    from domain.reputation import reputation

    good = [("success", 0.0)] * 20
    now, later = reputation(good, 0.0).score, reputation(good, 365 * DAY).score
    assert now > later > 0.5


def test_confidence_grows_with_history_and_probation_ends_after_five() -> None:
    from domain.reputation import CONFIDENCE_HALF, PROBATION, reputation

    assert reputation([], 0.0).confidence == 0.0 and reputation([], 0.0).probation
    confidences = [reputation([("success", 0.0)] * n, 0.0).confidence for n in range(1, 30)]
    assert confidences == sorted(confidences)
    assert reputation([("success", 0.0)] * int(CONFIDENCE_HALF), 0.0).confidence == 0.5
    assert reputation([("success", 0.0)] * (PROBATION - 1), 0.0).probation
    assert not reputation([("success", 0.0)] * PROBATION, 0.0).probation


def test_the_aggregate_records_when_each_outcome_happened() -> None:
    p = Provider(provider_id="p", region="eu", price_per_gpu_hour_micro=1, gpus=[])
    p.record_outcome("j1", "success", at=1_000.0)
    p.record_outcome("j2", "lost", at=2_000.0)
    assert p.outcome_times == [1_000.0, 2_000.0]
    assert p.reputation_at(2_000.0).score == pytest.approx(
        __import__("domain.reputation", fromlist=["reputation"]).reputation(
            [("success", 1_000.0), ("lost", 2_000.0)], 2_000.0).score)


def test_a_provider_snapshot_from_before_outcome_times_still_loads() -> None:
    from datetime import UTC, datetime

    state = {"outcomes": ["success", "lost"], "_modified_on": datetime(2026, 1, 1, tzinfo=UTC)}
    Provider.upcast_v2_v3(state)
    assert state["outcome_times"] == [datetime(2026, 1, 1, tzinfo=UTC).timestamp()] * 2
    old: dict[str, Any] = {"reservations": {}}
    Provider.upcast_v1_v2(old)
    assert old["suspended"] == [] and old["degraded"] == {} and old["reservation_clients"] == {}


def test_a_provider_snapshot_from_before_outcome_clients_still_loads() -> None:
    state = {"outcomes": ["success", "outvoted"], "outcome_times": [1.0, 2.0]}
    Provider.upcast_v3_v4(state)
    assert state["outcome_clients"] == ["", ""]  # not known: that `outvoted` never counts


# `outvoted` across clients (domain/reputation.py `counted_outvoted`)

HISTORY = [("success", day * DAY) for day in range(10)]  # ten days of good work
PAID = OUTVOTED_MIN_SPENT_MICRO  # a client that paid just enough for verified work


def outvotes(*runs: tuple[str, float]) -> tuple[list[tuple[str, float]], list[str]]:
    """HISTORY, then an `outvoted` for each (client, day), and the client of each outcome."""
    pairs = [*HISTORY, *(("outvoted", day * DAY) for _, day in runs)]
    return pairs, [*(f"happy-{i}" for i in range(len(HISTORY))), *(c for c, _ in runs)]


def paid(clients: list[str], spent: int = PAID) -> list[int]:
    """Every client's verified spend before each outcome: `spent` (enough, by default)."""
    return [spent] * len(clients)


def figures(pairs: list[tuple[str, float]], clients: list[str], as_of: float,
            spent: list[int] | None = None, before: list[int] | None = None
            ) -> tuple[Any, ...]:
    r = reputation(pairs, as_of, clients, paid(clients) if spent is None else spent,
                   before or ())
    return r.score, r.confidence, r.probation, r.outcomes, r.effective_outcomes


def without_outvoted(pairs: list[tuple[str, float]], clients: list[str], as_of: float
                     ) -> tuple[Any, ...]:
    kept = [i for i, (o, _) in enumerate(pairs) if o != "outvoted"]
    return figures([pairs[i] for i in kept], [clients[i] for i in kept], as_of)


def test_the_rule_is_named_and_weighs_as_a_failure() -> None:
    assert (OUTVOTED_CLIENTS, OUTVOTED_WINDOW_DAYS) == (3, 30.0)
    assert OUTVOTED_MIN_SPENT_MICRO == 10_000_000  # 10 credits of verified work
    assert OUTVOTED_WEIGHT == WEIGHTS["failure"] < WEIGHTS["mismatch"]


@pytest.mark.parametrize("framers", [["mallory"], ["mallory", "mallet"]])
def test_one_client_or_two_outvoting_a_provider_again_and_again_change_no_score(
    framers: list[str],
) -> None:
    """A client (or two) whose jobs outvote a provider twenty times in as many days lowers
    no figure of its score: their command may choose the answers."""
    pairs, clients = outvotes(*((framers[d % len(framers)], 10 + d) for d in range(20)))
    assert counted_outvoted(pairs, clients, paid(clients)) == frozenset()
    for as_of in (29 * DAY, 40 * DAY, 400 * DAY):
        assert figures(pairs, clients, as_of) == without_outvoted(pairs, clients, as_of)
    assert last_scored_at(pairs, 0.0, clients, paid(clients)) == 9 * DAY
    outcomes = [o for o, _ in pairs]
    assert reputation_score(outcomes, clients, paid(clients)) == reputation_score(outcomes[:10])


def test_three_distinct_clients_within_the_window_lower_the_score_by_a_failure() -> None:
    """The third distinct client within OUTVOTED_WINDOW_DAYS: its `outvoted` counts, as a
    failure at its time would (the first two, from before, do not)."""
    pairs, clients = outvotes(("alice", 10), ("bob", 12), ("carol", 14))
    assert counted_outvoted(pairs, clients, paid(clients)) == {12}
    as_of = 20 * DAY
    with_failure = [*HISTORY, ("failure", 14 * DAY)]
    expected = reputation(with_failure, as_of)
    got = reputation(pairs, as_of, clients, paid(clients))
    assert got.score == pytest.approx(expected.score, rel=1e-12)
    assert got.score < reputation(HISTORY, as_of).score
    assert got.confidence == pytest.approx(expected.confidence, rel=1e-12)
    assert got.outcomes == len(HISTORY) + 1 and not got.probation
    assert got.weighted[OUTVOTED_SCORED] == pytest.approx(0.5 ** (6 / 30))
    assert got.weighted["outvoted"] > got.weighted[OUTVOTED_SCORED]  # all three, shown
    # the read model's score is taken as of it: it is a scored outcome
    assert last_scored_at(pairs, 0.0, clients, paid(clients)) == 14 * DAY
    # without time: the same rule, every outcome at one moment
    outcomes = [o for o, _ in pairs]
    assert reputation_score(outcomes, clients, paid(clients)) == pytest.approx(
        reputation_score([*outcomes[:10], "failure"]), rel=1e-15)


def test_outvoted_runs_further_apart_than_the_window_change_no_score() -> None:
    """Three clients, but never three within OUTVOTED_WINDOW_DAYS of one another."""
    pairs, clients = outvotes(("alice", 10), ("bob", 30), ("carol", 41), ("alice", 61))
    assert counted_outvoted(pairs, clients, paid(clients)) == frozenset()
    assert figures(pairs, clients, 70 * DAY) == without_outvoted(pairs, clients, 70 * DAY)
    # the window holds its first day: 30 days after alice's, carol's counts
    pairs, clients = outvotes(("alice", 10), ("bob", 30), ("carol", 40))
    assert counted_outvoted(pairs, clients, paid(clients)) == {12}


def test_a_client_that_piles_on_costs_at_most_one_failure_a_window() -> None:
    """Once three clients outvoted a provider, each still costs it at most one fault per
    OUTVOTED_WINDOW_DAYS, however many of its jobs outvote it."""
    pairs, clients = outvotes(
        ("alice", 10), ("bob", 11), ("carol", 12),  # 10, 11, 12: carol's counts
        *(("carol", 13 + d / 10) for d in range(20)),  # 13 to 32: carol's again, none
        ("alice", 20),  # 33: alice's first to count
        ("bob", 40),  # 34: bob's, with alice's at 10 still in the window
        ("carol", 43),  # 35: more than 30 days after carol's that counted
        ("carol", 44),  # 36: not again
    )
    assert sorted(counted_outvoted(pairs, clients, paid(clients))) == [12, 33, 34, 35]
    assert reputation(pairs, 50 * DAY, clients, paid(clients)).outcomes == len(HISTORY) + 4


def test_an_outvoted_run_of_an_unknown_client_never_counts() -> None:
    """Outcomes recorded before they named their client (""), or with no clients at all."""
    pairs, clients = outvotes(("", 10), ("", 11), ("", 12), ("alice", 13), ("bob", 14))
    assert counted_outvoted(pairs, clients, paid(clients)) == frozenset()
    pairs, clients = outvotes(("alice", 10), ("bob", 11), ("carol", 12))
    assert counted_outvoted(pairs) == frozenset()
    assert reputation(pairs, 20 * DAY).score == reputation(HISTORY, 20 * DAY).score
    # clients named, but what they paid not known (recorded before outcomes carried it)
    assert counted_outvoted(pairs, clients) == frozenset()
    with pytest.raises(ValueError, match="13 outcomes but 2 clients"):
        reputation(pairs, 0.0, ["alice", "bob"])
    with pytest.raises(ValueError, match="13 clients but 2 spends"):
        reputation(pairs, 0.0, clients, [PAID, PAID])


def test_outvoted_runs_of_clients_that_paid_too_little_change_no_score() -> None:
    """Accounts are cheap, paid-for verified work is not: three new accounts (nothing paid
    for verified work before, whatever was deposited or granted to them), or three that
    paid a micro-credit less than OUTVOTED_MIN_SPENT_MICRO, outvoting a provider within
    the window lower no figure of its score; three that each paid enough do. A client that
    had not paid enough is no client for the tally either: two that paid and one that did
    not are two."""
    pairs, clients = outvotes(("sybil-1", 10), ("sybil-2", 11), ("sybil-3", 12))
    for spent in (0, PAID - 1):
        assert counted_outvoted(pairs, clients, paid(clients, spent)) == frozenset()
        for as_of in (12 * DAY, 40 * DAY):
            assert (figures(pairs, clients, as_of, paid(clients, spent))
                    == without_outvoted(pairs, clients, as_of))
        assert last_scored_at(pairs, 0.0, clients, paid(clients, spent)) == 9 * DAY
    assert counted_outvoted(pairs, clients, paid(clients)) == {12}
    assert figures(pairs, clients, 20 * DAY) == figures(
        [*HISTORY, ("failure", 12 * DAY)], clients[:11], 20 * DAY)
    # the third one short of the spend: two paying clients, no count
    short = [*paid(clients)[:12], PAID - 1]
    assert counted_outvoted(pairs, clients, short) == frozenset()
    # each outcome judged by its own stamp: the third client's next, once it paid, counts
    pairs, clients = outvotes(("sybil-1", 10), ("sybil-2", 11), ("sybil-3", 12),
                              ("sybil-3", 13))
    assert counted_outvoted(pairs, clients, [*short, PAID]) == {13}


def test_each_outvoted_a_client_caused_raises_the_spend_its_next_needs() -> None:
    """The price is per failure: a client's `outvoted` counts only where it had paid for
    OUTVOTED_MIN_SPENT_MICRO of verified work for each `outvoted` its jobs had caused before
    (against any provider, counted or not: `outvotes`), and one more. A client that paid
    10 credits frames once; its second needs 20, its third 30."""
    assert [outvoted_price_micro(n) for n in range(4)] == [PAID, 2 * PAID, 3 * PAID, 4 * PAID]
    pairs, clients = outvotes(("alice", 10), ("bob", 11), ("carol", 12))
    spend = paid(clients)
    assert counted_outvoted(pairs, clients, spend, [0] * len(clients)) == {12}
    # each had caused one before (on this provider or another): 10 credits is too little
    before = [0] * 10 + [1, 1, 1]
    assert counted_outvoted(pairs, clients, spend, before) == frozenset()
    assert figures(pairs, clients, 20 * DAY, spend, before) == without_outvoted(
        pairs, clients, 20 * DAY)
    assert last_scored_at(pairs, 0.0, clients, spend, before) == 9 * DAY
    assert reputation_score([o for o, _ in pairs], clients, spend, before) == reputation_score(
        [o for o, _ in HISTORY])
    # one micro-credit short of 20 credits, or 20: as with the first one's 10
    assert counted_outvoted(pairs, clients, paid(clients, 2 * PAID - 1), before) == frozenset()
    assert counted_outvoted(pairs, clients, paid(clients, 2 * PAID), before) == {12}
    # a client short of its price is no client for the tally either: two that paid theirs
    # and one that did not are two
    assert counted_outvoted(pairs, clients, spend, [0] * 12 + [1]) == frozenset()


def test_a_client_that_paid_once_frames_once_not_once_a_window() -> None:
    """Three clients that each paid 10 credits, and pay nothing more, outvote a provider
    every 31 days: their first three cost it one failure, and then nothing, where a price
    per account cost it a failure a client a window for as long as the accounts lived.
    Each further framing counts once its client paid another 10 credits."""
    runs = [(c, 10 + 31 * w + k) for w in range(4) for k, c in enumerate(["a", "b", "c"])]
    pairs, clients = outvotes(*runs)
    before = [0] * 10 + [w for w in range(4) for _ in range(3)]  # each client's own
    # the price per account (every stamp 0): each client's in each window after the first
    assert sorted(counted_outvoted(pairs, clients, paid(clients))) == [
        12, 13, 14, 15, 16, 17, 18, 19, 20, 21]
    assert counted_outvoted(pairs, clients, paid(clients), before) == {12}
    assert reputation(pairs, 200 * DAY, clients, paid(clients), before).outcomes == 11
    # paying 10 credits more before each framing buys each one again
    rising = [PAID] * 10 + [PAID * (1 + w) for w in range(4) for _ in range(3)]
    assert counted_outvoted(pairs, clients, rising, before) == counted_outvoted(
        pairs, clients, paid(clients))
    with pytest.raises(ValueError, match="13 clients but 2 outvote counts"):
        counted_outvoted(pairs[:13], clients[:13], paid(clients)[:13], [0, 0])


PAID_GPU_MS = 10 * 3_600_000  # ten GPU-hours at PRICE (a credit an hour): PAID, charged


def pay_for_work(app: Network, client: str, n: int = 0, succeeded: bool = True) -> str:
    """`client` pays for a job of ten GPU-hours on a provider of its own (`worker-<client>`),
    which the network verified (`succeeded`) or accepted as a run that did not do what it
    asked (exit 1, say: paid, but no verified success)."""
    job, prov = f"work-{client}-{n}", f"worker-{client}"
    app.open_client(client, START)
    app.submit_job(job, client, make_spec(timeout="12h"))
    assert app.admit_job(job).admitted
    app.register_provider(prov, "eu-west", PRICE, [gpu(0)])
    app.allocate(job, 1, set(), {prov})
    for step in STEPS:
        app.record_step(job, step, 1, step_data(step, prov, PAID_GPU_MS))
    app.record_verdict(job, True, succeeded, "verified" if succeeded else "exit code 1")
    assert app.settle(job, prov, PAID_GPU_MS, PRICE, True, FEE_BPS).charged_micro == PAID
    app.release_gpus(job, prov)
    app.finish_job(job, succeeded, "" if succeeded else "exit code 1")
    return job


def spent(app: Network, client: str) -> int:
    return int(app.account(client_account(client)).verified_spent_micro)


def test_the_app_stamps_each_outcome_with_what_its_client_paid_for_verified_work(
    app: Network,
) -> None:
    """The spend comes from the client's ledger account, as the control plane has it when it
    records the outcome: only what the client was charged for jobs whose verdict was a
    verified success, its other jobs only. Three new accounts with granted or deposited
    credits outvoting a provider change no score; three that each paid enough do, where
    enough is 10 credits more for each `outvoted` the client's jobs had caused before."""
    app.register_provider("p", "eu", PRICE, [gpu(0)])
    app.record_reputation("job-0", "p", "success")  # of no job the network knows
    score = app.provider("p").reputation_at(0.0).score
    # Funded, not spent: a grant, a deposit, a welcome balance; and one paid job whose run
    # was accepted but was no success (no verified work either).
    app.grant("sybil-1", 100 * PAID, "g-1", "granted by admin")
    app.deposit("sybil-2", 100 * PAID, "d-2")
    app.open_client("sybil-3", 100 * PAID)
    pay_for_work(app, "sybil-3", succeeded=False)
    for n in (1, 2, 3):
        assert spent(app, f"sybil-{n}") == 0
        app.submit_job(f"frame-{n}", f"sybil-{n}", make_spec())
        app.record_reputation(f"frame-{n}#1", "p", "outvoted")
    provider = app.provider("p")
    assert provider.outcome_clients == ["", "sybil-1", "sybil-2", "sybil-3"]
    assert provider.outcome_spent == [0, 0, 0, 0]
    assert provider.reputation_at(0.0).score == score
    assert counted_outvoted(list(zip(provider.outcomes, provider.outcome_times, strict=True)),
                            provider.outcome_clients, provider.outcome_spent) == frozenset()
    # A job's own charge is not spend before it: each payer's first job frames no one.
    for client in ("alice", "bob", "carol"):
        job = pay_for_work(app, client)
        assert spent(app, client) == PAID
        app.record_reputation(job, "p", "outvoted")
    provider = app.provider("p")
    assert provider.outcome_spent[-3:] == [0, 0, 0]
    assert provider.reputation_at(0.0).score == score
    # Their next jobs, each after 10 credits of verified work, but each client's first
    # `outvoted` (which did not count) raised the price of its next to 20: none counts.
    for client in ("alice", "bob", "carol"):
        app.submit_job(f"frame-{client}", client, make_spec())
        app.record_reputation(f"frame-{client}", "p", "outvoted")
    provider = app.provider("p")
    assert provider.outcome_spent[-3:] == [PAID, PAID, PAID]
    assert provider.outcome_outvotes[-6:] == [0, 0, 0, 1, 1, 1]
    assert provider.reputation_at(0.0).score == score
    # Two outvoted caused before: their next needs 30 credits paid. The third's counts.
    for client in ("alice", "bob", "carol"):
        pay_for_work(app, client, 1)
        pay_for_work(app, client, 2)
        app.submit_job(f"frame-{client}-2", client, make_spec())
        app.record_reputation(f"frame-{client}-2", "p", "outvoted")
    provider = app.provider("p")
    assert provider.outcome_spent[-3:] == [3 * PAID] * 3
    assert provider.outcome_outvotes[-3:] == [2, 2, 2]
    at = provider.outcome_times
    now = provider.reputation_at(0.0).score
    assert now < score
    assert now == pytest.approx(reputation([("success", at[0]), ("failure", at[-1])],
                                           0.0).score, rel=1e-12)
    # Retried, the settlement notes nothing twice.
    app.settle("work-alice-0", "worker-alice", PAID_GPU_MS, PRICE, True, FEE_BPS)
    assert spent(app, "alice") == 3 * PAID


def outvotes_caused(app: Network, client: str) -> int:
    return int(app.account(client_account(client)).outvotes_caused)


def test_the_app_counts_each_outvoted_a_clients_jobs_caused_on_its_account(
    app: Network,
) -> None:
    """Each `outvoted` recorded of a client's job, against any provider, is counted on the
    client's ledger account (OutvotedCaused), in the outcome's transaction, and the next
    outcome of its jobs carries the count before it (`client_outvotes_before`); other
    outcomes count nothing, and an outcome recorded again (a retried activity) counts once.
    The outcomes of one job's close each see the ones before them."""
    for prov in ("p", "q", "r"):
        app.register_provider(prov, "eu", PRICE, [gpu(0)])
    pay_for_work(app, "alice")
    for n in range(4):
        app.submit_job(f"job-{n}", "alice", make_spec())
    app.record_reputation("job-0#1", "p", "success")
    app.record_reputation("job-0#2", "q", "failure")
    app.record_reputation("job-0#3", "r", "outvoted")
    assert outvotes_caused(app, "alice") == 1
    for _ in range(2):  # retried: the provider has it, the account counts it once
        app.record_reputation("job-0#3", "r", "outvoted")
    assert outvotes_caused(app, "alice") == 1
    app.record_reputation("job-1", "p", "outvoted")  # another provider: the client's count
    app.record_reputation("job-1", "q", "outvoted")  # the same job, another provider's run
    app.record_reputation("job-unknown", "q", "outvoted")  # of no client: counted nowhere
    assert outvotes_caused(app, "alice") == 3
    assert app.provider("p").outcome_outvotes == [0, 1]
    assert app.provider("q").outcome_outvotes == [0, 2, 0]
    assert app.provider("r").outcome_outvotes == [0]
    assert app.provider("q").outcome_clients == ["alice", "alice", ""]
    # one close, two `outvoted` and a success: the second sees the first's count
    close = [("job-2#1", "p", "outvoted"), ("job-2#2", "q", "success"),
             ("job-2#3", "r", "outvoted")]
    for _ in range(2):  # closed again: nothing counted again
        app.close_job("job-2", None, FEE_BPS, close, [], False, "outvoted twice")
        assert outvotes_caused(app, "alice") == 5
    assert app.provider("p").outcome_outvotes == [0, 1, 3]
    assert app.provider("q").outcome_outvotes[-1] == 4  # a success carries it too
    assert app.provider("r").outcome_outvotes == [0, 4]
    caused = [(e.outcome_key, e.provider_id) for e in all_events(app)
              if type(e).__qualname__ == "Account.OutvotedCaused"]
    assert caused == [("job-0#3", "r"), ("job-1", "p"), ("job-1", "q"), ("job-2#1", "p"),
                      ("job-2#3", "r")]
    # the providers' and other clients' accounts count nothing
    assert outvotes_caused(app, "bob") == 0
    assert app.account("provider:p").outvotes_caused == 0
    with pytest.raises(DomainError, match="only a client's jobs outvote a run"):
        app.account("provider:p").note_outvoted("job-3", "q")


def test_the_outvoted_count_an_outcome_carries_is_bounded() -> None:
    provider = Provider(provider_id="p", region="eu", price_per_gpu_hour_micro=PRICE, gpus=[gpu(0)])
    for bad in (-1, MAX_OUTVOTES + 1, 1.5, "1", True):
        with pytest.raises(DomainError) as info:
            provider.record_outcome("job-1", "outvoted", client_id="alice",
                                    client_outvotes_before=bad)  # type: ignore[arg-type]
        assert info.value.field == "client_outvotes_before"
    assert provider.outcomes == []
    assert provider.record_outcome("job-1", "outvoted", client_id="alice",
                                   client_outvotes_before=MAX_OUTVOTES)
    assert not provider.record_outcome("job-1", "outvoted", client_id="alice")
    assert provider.outcome_outvotes == [MAX_OUTVOTES]
    # at the bound, the price is past any spend an outcome can carry: the clamp counts none
    assert outvoted_price_micro(MAX_OUTVOTES) > MAX_SPENT_MICRO


def test_the_spend_an_outcome_carries_is_bounded() -> None:
    provider = Provider(provider_id="p", region="eu", price_per_gpu_hour_micro=PRICE, gpus=[gpu(0)])
    for bad in (-1, 2**53 + 1, 1.5, "10", True):
        with pytest.raises(DomainError) as info:
            provider.record_outcome("job-1", "outvoted", client_id="alice",
                                    client_spent_micro=bad)  # type: ignore[arg-type]
        assert info.value.field == "client_spent_micro"
    assert provider.outcomes == []
    provider.record_outcome("job-1", "outvoted", client_id="alice", client_spent_micro=2**53)
    assert provider.outcome_spent == [2**53]


def test_a_provider_snapshot_from_before_outcome_spent_still_loads() -> None:
    state = {"outcomes": ["success", "outvoted"], "outcome_clients": ["a", "b"]}
    Provider.upcast_v4_v5(state)
    assert state["outcome_spent"] == [0, 0]  # not known: that `outvoted` never counts
    account: dict[str, Any] = {"balance_micro": 5}
    Account.upcast_v1_v2(account)
    assert account["verified_spent_micro"] == 0


def test_snapshots_from_before_outvote_counts_still_load() -> None:
    """A Provider v5 snapshot's outcomes carried no count (0: judged by the spend alone, as
    then); an Account v2 snapshot had counted no `outvoted` (none was counted then)."""
    state = {"outcomes": ["success", "outvoted"], "outcome_spent": [0, PAID]}
    Provider.upcast_v5_v6(state)
    assert state["outcome_outvotes"] == [0, 0]
    account: dict[str, Any] = {"balance_micro": 5, "verified_spent_micro": PAID}
    Account.upcast_v2_v3(account)
    assert account["outvotes_caused"] == 0


def test_the_app_records_each_outcomes_client_from_its_job(app: Network) -> None:
    """The client comes from the job (for `<job>#<attempt>` too), never from a provider:
    one client's jobs outvoting a provider change nothing, a third client's lower it (each
    of them having paid for enough verified work)."""
    app.register_provider("p", "eu", PRICE, [gpu(0)])
    app.record_reputation("job-0", "p", "success")  # of no job the network knows
    for client in ("mallory", "alice", "bob"):
        pay_for_work(app, client)
    for n, client in enumerate(["mallory", "mallory", "mallory", "alice", "bob"]):
        app.submit_job(f"job-{client}-{n}", client, make_spec())
    for n in range(3):
        app.record_reputation(f"job-mallory-{n}#{n + 1}", "p", "outvoted")
    provider = app.provider("p")
    assert provider.outcome_clients == ["", "mallory", "mallory", "mallory"]
    assert provider.reputation_at(provider.outcome_times[-1]).score == pytest.approx(
        reputation([("success", provider.outcome_times[0])], provider.outcome_times[-1]).score)
    app.record_reputation("job-alice-3", "p", "outvoted")
    score = app.provider("p").reputation
    app.record_reputation("job-bob-4#2", "p", "outvoted")
    provider = app.provider("p")
    assert provider.outcome_clients == ["", "mallory", "mallory", "mallory", "alice", "bob"]
    assert provider.reputation < score
    assert provider.reputation_at(provider.outcome_times[-1]).outcomes == 2


def test_the_read_model_and_a_recompute_agree_with_the_aggregate(
    sqlite_settings: Settings,
) -> None:
    """The score the views keep is the one anyone recomputes from the log (clients too)."""
    app = Network(env=sqlite_settings.eventsourcing_env())
    views = ViewDB(sqlite_settings)
    try:
        app.register_provider("p", "eu", PRICE, [gpu(0)])
        app.record_reputation("job-s", "p", "success")  # of no job the network knows
        for client in ("mallory", "alice", "bob"):
            pay_for_work(app, client)
        # three new accounts that were granted credits, and paid for no verified work
        for n in (1, 2, 3):
            app.grant(f"sybil-{n}", START, f"g-{n}", "granted")
            app.submit_job(f"frame-{n}", f"sybil-{n}", make_spec())
            app.record_reputation(f"frame-{n}", "p", "outvoted")
        Projector(app, views).catch_up()
        (row,) = views.query(
            "SELECT reputation, outcome_spent FROM providers WHERE provider_id = 'p'")
        assert json.loads(row["outcome_spent"]) == [0, 0, 0, 0]
        assert row["reputation"] == reputation_score(["success"])
        spend = {r["name"]: r["verified_spent_micro"] for r in views.query(
            "SELECT name, verified_spent_micro FROM accounts WHERE name LIKE 'client:%'")}
        assert spend == {"client:mallory": PAID, "client:alice": PAID, "client:bob": PAID,
                         "client:sybil-1": 0, "client:sybil-2": 0, "client:sybil-3": 0}
        shown = []
        for n, client in enumerate(["mallory", "mallory", "alice", "bob"]):
            app.submit_job(f"job-{n}", client, make_spec())
            app.record_reputation(f"job-{n}", "p", "outvoted")
            Projector(app, views).catch_up()
            (row,) = views.query(
                "SELECT reputation, outcome_clients FROM providers WHERE provider_id = 'p'")
            shown.append(row["reputation"])
        assert json.loads(row["outcome_clients"]) == [
            "", "sybil-1", "sybil-2", "sybil-3", "mallory", "mallory", "alice", "bob"]
        assert shown[0] == shown[1] == shown[2] > shown[3]  # bob's is the third client's
        assert row["reputation"] == pytest.approx(
            app.provider("p").reputation_at(app.provider("p").outcome_times[-1]).score)
        report = recompute_reputation(sqlite_settings)
        assert report["all_match"], report
        (p,) = [r for r in report["providers"] if r["provider_id"] == "p"]
        assert p["components"][OUTVOTED_SCORED] > 0 and p["outcomes"] == 8
    finally:
        views.close()
        app.close()


def test_the_read_model_and_a_recompute_apply_the_price_per_failure(
    sqlite_settings: Settings,
) -> None:
    """Alice and Bob each paid 10 credits and spent their one framing on provider q (two
    clients: nothing counts there). On p, with Carol's, three paying-looking clients, but
    Alice's and Bob's `outvoted` each needed 20 credits paid: none counts, for the
    aggregate, the views and a recompute alike. Once each paid 30 (two caused before),
    their next ones count: p's score falls, the same everywhere."""
    app = Network(env=sqlite_settings.eventsourcing_env())
    views = ViewDB(sqlite_settings)

    def frame(client: str, provider: str) -> None:
        job = f"frame-{client}-{provider}-{len(app.provider(provider).outcomes)}"
        app.submit_job(job, client, make_spec())
        app.record_reputation(job, provider, "outvoted")

    def shown() -> tuple[float, list[int]]:
        Projector(app, views).catch_up()
        (row,) = views.query(
            "SELECT reputation, outcome_outvotes FROM providers WHERE provider_id = 'p'")
        return row["reputation"], json.loads(row["outcome_outvotes"])

    try:
        for prov in ("p", "q"):
            app.register_provider(prov, "eu", PRICE, [gpu(0)])
        app.record_reputation("job-s", "p", "success")  # of no job the network knows
        for client in ("alice", "bob", "carol"):
            pay_for_work(app, client)
        frame("alice", "q")
        frame("bob", "q")
        for client in ("alice", "bob", "carol"):
            frame(client, "p")
        provider = app.provider("p")
        assert provider.outcome_spent == [0, PAID, PAID, PAID]
        assert provider.outcome_outvotes == [0, 1, 1, 0]
        assert provider.reputation_at(0.0).score == reputation_score(["success"])
        assert shown() == (reputation_score(["success"]), [0, 1, 1, 0])
        report = recompute_reputation(sqlite_settings)
        assert report["all_match"], report
        (p,) = [r for r in report["providers"] if r["provider_id"] == "p"]
        assert p["components"][OUTVOTED_SCORED] == 0
        for client in ("alice", "bob"):
            pay_for_work(app, client, 1)
            pay_for_work(app, client, 2)
            frame(client, "p")
        provider = app.provider("p")
        assert provider.outcome_outvotes[-2:] == [2, 2]
        score, stamps = shown()
        assert stamps == [0, 1, 1, 0, 2, 2]
        assert score < reputation_score(["success"])
        assert score == pytest.approx(provider.reputation_at(provider.outcome_times[-1]).score)
        report = recompute_reputation(sqlite_settings)
        assert report["all_match"], report
        (p,) = [r for r in report["providers"] if r["provider_id"] == "p"]
        assert p["components"][OUTVOTED_SCORED] > 0
        caused = {r["name"]: r["outvotes_caused"] for r in views.query(
            "SELECT name, outvotes_caused FROM accounts WHERE name LIKE 'client:%'")}
        assert caused == {"client:alice": 3, "client:bob": 3, "client:carol": 1}
        assert caused == {f"client:{c}": outvotes_caused(app, c)
                          for c in ("alice", "bob", "carol")}
    finally:
        views.close()
        app.close()
