"""Verification policy: check rates from a provider's outcomes, comparators and quorums."""

from __future__ import annotations

import itertools

import pytest

from domain.verification import (
    CAUGHT_FLOOR,
    EXACT,
    FLOOR,
    PROBATION,
    RECHECK_LIMIT,
    REPROBATION,
    Comparator,
    OutputFile,
    canary_rate,
    check_rate,
    decide_canary,
    decide_check,
    ever_caught,
    manifests_agree,
    outvoted,
    quorum,
    recheck_after_mismatch,
    verified_streak,
)
from protocol import digest

NUMERIC = {"kind": "numeric", "rel_tol": 1e-6, "abs_tol": 0}


def ok(n: int) -> list[str]:
    return ["success"] * n


def output(text: str, path: str = "out/result.txt") -> OutputFile:
    data = text.encode()
    return OutputFile(path, digest.of_bytes(data), len(data), text)


# Trust from outcomes


def test_streak_counts_successes_since_the_last_mismatch() -> None:
    assert verified_streak([]) == 0
    assert verified_streak(ok(7)) == 7
    assert verified_streak([*ok(30), "mismatch", *ok(4)]) == 4
    assert verified_streak([*ok(3), "mismatch"]) == 0
    # a failure or a lost run says nothing about honesty: it neither adds nor resets
    assert verified_streak(["success", "failure", "timeout", "lost", "success"]) == 2
    assert not ever_caught(["success", "failure", "lost"])
    assert ever_caught([*ok(100), "mismatch", *ok(100)])


def test_a_new_provider_is_always_checked_on_probation() -> None:
    for n in range(PROBATION):
        assert check_rate(ok(n)) == 1.0
        assert decide_check(ok(n), 0.999999)
    assert check_rate(ok(PROBATION + 1)) < 1.0


def test_the_rate_falls_as_the_streak_grows_down_to_the_floor() -> None:
    rates = [check_rate(ok(n)) for n in range(400)]
    assert all(a >= b for a, b in itertools.pairwise(rates))
    assert rates[PROBATION] == 1.0  # continuous where probation ends
    assert rates[PROBATION + 1] < rates[PROBATION]
    assert rates[2 * PROBATION] == pytest.approx(0.25)
    assert min(rates) == FLOOR
    assert rates[-1] == FLOOR


def test_a_mismatch_sends_the_provider_back_to_a_longer_probation() -> None:
    trusted = ok(500)
    assert check_rate(trusted) == FLOOR
    caught = [*trusted, "mismatch"]
    assert check_rate(caught) == 1.0
    assert check_rate([*caught, *ok(REPROBATION - 1)]) == 1.0
    assert check_rate([*caught, *ok(REPROBATION + 1)]) < 1.0
    # once caught, never trusted as much as a provider that never was
    assert check_rate([*caught, *ok(10_000)]) == CAUGHT_FLOOR > FLOOR
    # failures do not reset anything
    assert check_rate([*trusted, "failure", "timeout"]) == FLOOR


def test_an_outvoted_run_puts_the_provider_back_on_probation() -> None:
    """Outvoted (a majority of other owners disagreed, storage did not contradict it):
    checked on every result until PROBATION more agreed, then the rate falls as a new
    provider's does; not a catch, so no reprobation and no higher floor. The reputation
    score does not move (tests/domain/test_reputation.py)."""
    trusted = ok(500)
    assert check_rate(trusted) == FLOOR
    outvoted_once = [*trusted, "outvoted"]
    assert verified_streak(outvoted_once) == 0 and not ever_caught(outvoted_once)
    for n in range(PROBATION):
        assert check_rate([*outvoted_once, *ok(n)]) == 1.0
        assert decide_check([*outvoted_once, *ok(n)], 0.999999)
    # failures and timeouts after it do not end the probation
    assert check_rate([*outvoted_once, *ok(PROBATION - 1), "failure", "timeout"]) == 1.0
    after = [check_rate([*outvoted_once, *ok(n)]) for n in range(400)]
    assert after == [check_rate(ok(n)) for n in range(400)]  # as a new provider's
    assert after[-1] == FLOOR  # and no CAUGHT_FLOOR
    # every wrong answer tried costs it again
    twice = [*outvoted_once, *ok(3 * PROBATION), "outvoted"]
    assert check_rate(twice) == 1.0
    # a caught provider outvoted again starts its (longer) reprobation again
    caught = [*trusted, "mismatch", *ok(2 * REPROBATION), "outvoted"]
    assert check_rate([*caught, *ok(REPROBATION - 1)]) == 1.0
    assert check_rate([*caught, *ok(10_000)]) == CAUGHT_FLOOR
    # canaries follow the check rate
    assert canary_rate(outvoted_once) == canary_rate([])


def test_decide_check_is_a_pure_function_of_outcomes_and_draw() -> None:
    outcomes = ok(3 * PROBATION)
    rate = check_rate(outcomes)
    assert 0 < rate < 1
    draws = [i / 1000 for i in range(1000)]
    first = [decide_check(outcomes, d) for d in draws]
    assert first == [decide_check(list(outcomes), d) for d in draws]
    assert first == [d < rate for d in draws]
    assert sum(first) / len(draws) == pytest.approx(rate, abs=0.001)
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="draw must be in"):
            decide_check(outcomes, bad)


def test_canaries_are_a_small_share_that_falls_with_trust() -> None:
    rates = [canary_rate(ok(n)) for n in range(300)]
    assert all(a >= b for a, b in itertools.pairwise(rates))
    assert all(0 < r <= check_rate(ok(n)) for n, r in enumerate(rates))
    assert rates[0] > rates[-1]
    assert canary_rate([*ok(300), "mismatch"]) == rates[0]
    assert decide_canary([], 0.0)
    assert not decide_canary(ok(300), 0.5)


def test_recheck_after_a_mismatch_covers_the_results_accepted_after_probation() -> None:
    assert recheck_after_mismatch(ok(40)) == 0  # no mismatch just recorded
    assert recheck_after_mismatch([]) == 0
    assert recheck_after_mismatch([*ok(PROBATION - 1), "mismatch"]) == 0
    assert recheck_after_mismatch([*ok(40), "mismatch"]) == 40 - PROBATION
    assert recheck_after_mismatch([*ok(5000), "mismatch"]) == RECHECK_LIMIT
    # caught again during reprobation: everything since the last mismatch was checked
    assert recheck_after_mismatch([*ok(40), "mismatch", *ok(20), "mismatch"]) == 0
    again = [*ok(40), "mismatch", *ok(REPROBATION + 7), "mismatch"]
    assert recheck_after_mismatch(again) == 7
    # an outvoted run in between does not hide the unchecked results before it
    assert recheck_after_mismatch([*ok(40), "outvoted", *ok(2), "mismatch"]) == 42 - PROBATION


# Comparators


def test_exact_needs_the_same_bytes_paths_and_sizes() -> None:
    a = [output("loss 0.1\n"), output("ok\n", "out/status")]
    assert manifests_agree(a, list(reversed(a)), EXACT)  # order of the manifest is irrelevant
    assert manifests_agree(a, a, {"kind": "exact"})
    assert manifests_agree(a, a, None)
    assert not manifests_agree(a, [output("loss 0.1000000001\n"), a[1]], EXACT)
    assert not manifests_agree(a, a[:1], EXACT)  # a path missing
    assert not manifests_agree(a, [a[0], output("ok\n", "out/other")], EXACT)
    same_hash_other_size = [a[0]._replace(size=a[0].size + 1), a[1]]
    assert not manifests_agree(a, same_hash_other_size, EXACT)
    # plain (path, digest, size) tuples work too
    plain = [(f.path, f.digest, f.size) for f in a]
    assert manifests_agree(plain, a, EXACT)


def test_numeric_accepts_last_bit_noise_that_exact_rejects() -> None:
    x = 0.1 + 0.2
    a = [output(f"step 0 loss {x!r}\nstep 1 loss {2.5!r}\n")]
    b = [output(f"step 0 loss {x * (1 + 2**-52)!r}\nstep 1 loss 2.5\n")]
    assert a[0].size != b[0].size or a[0].digest != b[0].digest
    assert not manifests_agree(a, b, EXACT)
    assert manifests_agree(a, b, NUMERIC)
    assert manifests_agree([output("loss 0.3\n")], [output("loss 0.30000000000000004\n")], NUMERIC)
    assert manifests_agree([output("1e3")], [output("1000.0")], NUMERIC)
    # a wrong result is still wrong
    assert not manifests_agree([output("loss 0.3\n")], [output("loss 0.3003\n")], NUMERIC)
    # the text around the numbers must be the same, and as many numbers
    assert not manifests_agree([output("loss 0.3\n")], [output("lost 0.3\n")], NUMERIC)
    assert not manifests_agree([output("0.3 0.4\n")], [output("0.3\n")], NUMERIC)
    # without the texts, only identical bytes agree
    no_text = [a[0]._replace(text=None)]
    assert not manifests_agree(no_text, b, NUMERIC)
    assert manifests_agree(no_text, a, NUMERIC)


@pytest.mark.parametrize(
    ("spec", "left", "right", "agree"),
    [
        ({"kind": "numeric", "rel_tol": 0.01}, "100", "101", True),  # 1 <= 0.01 * 101
        ({"kind": "numeric", "rel_tol": 0.01}, "100", "102", False),  # 2 > 0.01 * 102
        ({"kind": "numeric", "rel_tol": 0.01}, "-100", "-101", True),
        ({"kind": "numeric", "rel_tol": 0.01}, "-100", "101", False),
        ({"kind": "numeric", "abs_tol": 0.5, "rel_tol": 0}, "1.0", "1.5", True),  # at the edge
        ({"kind": "numeric", "abs_tol": 0.5, "rel_tol": 0}, "1.0", "1.5000001", False),
        ({"kind": "numeric", "abs_tol": 0.5, "rel_tol": 0}, "0", "-0.25", True),
        ({"kind": "numeric"}, "1.0", "1.0000001", True),  # default rel_tol 1e-6
        ({"kind": "numeric"}, "1.0", "1.00001", False),
        ({"kind": "numeric"}, "0.0", "1e-300", False),  # relative only: zero matches only zero
        ({"kind": "numeric", "rel_tol": 1e-6, "abs_tol": 1e-9}, "0.0", "1e-10", True),
        ({"kind": "numeric", "rel_tol": 1e-6}, "epoch 3", "epoch 4", False),
    ],
)
def test_numeric_tolerance_edges(spec: dict[str, object], left: str, right: str,
                                 agree: bool) -> None:
    assert manifests_agree([output(left)], [output(right)], spec) is agree
    assert manifests_agree([output(right)], [output(left)], spec) is agree


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "fuzzy"}, "kind must be 'exact' or 'numeric'"),
        ({"kind": "numeric", "rel_tol": -1}, "rel_tol must be finite and not negative"),
        ({"kind": "numeric", "abs_tol": float("inf")}, "abs_tol must be finite"),
        ({"kind": "numeric", "rel_tol": "1e-6"}, "rel_tol must be a number"),
        ({"kind": "exact", "rel_tol": 1e-6}, "an exact comparator takes no tolerance"),
        ({"kind": "numeric", "tol": 1e-6}, "unknown comparator fields: tol"),
    ],
)
def test_bad_comparator_specs_are_refused(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Comparator.from_spec(spec)


def test_comparator_from_spec() -> None:
    assert Comparator.from_spec(None) == EXACT
    assert Comparator.from_spec({"kind": "exact"}) == EXACT
    assert Comparator.from_spec({"kind": "numeric"}) == Comparator("numeric", 1e-6, 0.0)
    assert Comparator.from_spec(NUMERIC) == Comparator("numeric", 1e-6, 0)


def test_a_manifest_with_a_path_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="same path twice"):
        manifests_agree([output("a"), output("b")], [output("a")], EXACT)


# Quorum


def test_quorum_of_two_needs_both_to_agree() -> None:
    right, noisy, wrong = output("loss 0.3\n"), output("loss 0.30000000000000004\n"), output(
        "loss 0.31\n")
    assert quorum([[right], [right]], 2, EXACT) == 0
    assert quorum([[right], [wrong]], 2, EXACT) is None
    assert quorum([[right], [noisy]], 2, EXACT) is None  # exact flags the noise
    assert quorum([[right], [noisy]], 2, NUMERIC) == 0  # the declared comparator does not
    assert quorum([[right]], 2, EXACT) is None
    assert quorum([], 2, EXACT) is None


def test_a_third_result_breaks_the_tie() -> None:
    right, wrong = [output("42\n")], [output("41\n")]
    results = [wrong, right, right]
    assert quorum(results, 2, EXACT) == 1
    assert outvoted(results, 1, EXACT) == [0]
    assert quorum([right, wrong, right], 2, EXACT) == 0
    assert outvoted([right, wrong, right], 0, EXACT) == [1]
    # three different results: still no quorum, the caller asks a fourth provider
    assert quorum([right, wrong, [output("40\n")]], 2, EXACT) is None
    # two groups of two: a tie, no winner
    assert quorum([right, wrong, wrong, right], 2, EXACT) is None


def test_quorum_of_three_is_a_majority_of_two() -> None:
    a, b, c = [output("a")], [output("b")], [output("c")]
    assert quorum([a, b, a], 3, EXACT) == 0
    assert quorum([b, a, a], 3, EXACT) == 1
    assert quorum([a, b, c], 3, EXACT) is None
    assert quorum([a], 1, EXACT) == 0
    with pytest.raises(ValueError, match="k must be at least 1"):
        quorum([a], 0, EXACT)
