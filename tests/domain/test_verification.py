"""The adaptive verification policy and the result comparators (domain/verification.py)."""

from __future__ import annotations

import pytest

from domain.verification import (
    CAUGHT_FLOOR,
    FLOOR,
    PROBATION,
    REPROBATION,
    Comparator,
    OutputFile,
    check_rate,
    decide_check,
    manifests_agree,
    outvoted,
    quorum,
    verified_streak,
)


def test_new_providers_are_always_checked_then_less_as_their_streak_grows() -> None:
    assert check_rate([]) == 1.0
    assert check_rate(["success"] * (PROBATION - 1)) == 1.0
    rates = [check_rate(["success"] * n) for n in range(PROBATION, 20 * PROBATION, PROBATION)]
    assert rates == sorted(rates, reverse=True) and rates[0] == 1.0
    assert check_rate(["success"] * 10_000) == FLOOR


def test_a_mismatch_puts_a_provider_back_on_a_longer_probation() -> None:
    trusted = ["success"] * 100
    caught = [*trusted, "mismatch"]
    assert verified_streak(caught) == 0
    assert check_rate(caught) == 1.0
    assert check_rate([*caught, *["success"] * (REPROBATION - 1)]) == 1.0
    assert check_rate([*caught, *["success"] * 10_000]) == CAUGHT_FLOOR
    # Failures and losses cost reputation but say nothing about honesty.
    assert verified_streak(["success", "failure", "lost", "success"]) == 2


def test_the_decision_is_a_function_of_the_draw() -> None:
    outcomes = ["success"] * (4 * PROBATION)
    rate = check_rate(outcomes)
    assert decide_check(outcomes, rate - 1e-9) and not decide_check(outcomes, rate)
    assert decide_check(outcomes, 0.0) == decide_check(outcomes, 0.0)
    with pytest.raises(ValueError, match="draw must be in"):
        decide_check(outcomes, 1.0)


def test_comparators() -> None:
    a = [OutputFile("pi.txt", "aa" * 32, 8, "3.141592\n")]
    b = [OutputFile("pi.txt", "bb" * 32, 18, "3.1415920000000001\n")]
    c = [OutputFile("pi.txt", "cc" * 32, 8, "3.141593\n")]
    exact, numeric = Comparator(), Comparator("numeric", rel_tol=1e-9)
    assert manifests_agree(a, a, exact) and not manifests_agree(a, b, exact)
    assert manifests_agree(a, b, numeric)
    assert not manifests_agree(a, c, numeric)  # 1e-6 apart: beyond the tolerance
    assert not manifests_agree(a, [OutputFile("e.txt", "aa" * 32, 8)], numeric)  # other path
    assert manifests_agree(a, c, {"kind": "numeric", "rel_tol": 1e-3})
    with pytest.raises(ValueError, match="exact comparator takes no tolerance"):
        Comparator("exact", rel_tol=0.1)


def test_quorum_and_who_is_outvoted() -> None:
    good, bad = [("o", "11" * 32, 1)], [("o", "22" * 32, 1)]
    assert quorum([good], 1) == 0
    assert quorum([good, good], 2) == 0
    assert quorum([good, bad], 2) is None  # two that disagree: a third must decide
    assert quorum([bad, good, good], 3) == 1
    assert outvoted([bad, good, good], 1) == [0]
    assert quorum([good, bad, [("o", "33" * 32, 1)]], 3) is None
