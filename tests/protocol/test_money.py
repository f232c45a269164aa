"""Money: integer micro-credits, parsed exactly, rendered for people, charged rounded up."""

from __future__ import annotations

from decimal import Decimal, localcontext
from typing import Any

import pytest

from protocol.money import (
    MICRO,
    cost_of_gpu_time,
    credits_to_micro,
    micro_to_credits,
    price_to_micro,
    recorded_credits_to_micro,
)


@pytest.mark.parametrize(
    ("value", "micro"),
    [
        ("2.5", 2_500_000),
        ("2.50", 2_500_000),
        (3, 3_000_000),
        ("0", 0),
        ("0.000001", 1),
        ("1.000001", 1_000_001),
        ("123456.654321", 123_456_654_321),
        ("-1.5", -1_500_000),
        (0.1, 100_000),  # the float's shortest repr, "0.1", not 0.1000000000000000055...
        (2.5, 2_500_000),
        (Decimal("7.25"), 7_250_000),
        ("9223372036854.775807", 2**63 - 1),
    ],
)
def test_credits_to_micro_is_exact(value: Any, micro: int) -> None:
    result = credits_to_micro(value)
    assert result == micro
    assert type(result) is int


@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_refused(value: bool) -> None:
    with pytest.raises(ValueError, match="must be a number of credits, not a boolean"):
        credits_to_micro(value)


@pytest.mark.parametrize("value", ["abc", "", "1,5", "2.5 credits", "0x10", "nan", "inf"])
def test_text_that_is_not_a_number(value: str) -> None:
    with pytest.raises(ValueError, match="is not a number of credits") as info:
        credits_to_micro(value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    "value", ["nan", "NaN", "inf", "-Infinity", "sNaN", float("nan"), float("inf"), -float("inf")]
)
def test_non_finite_amounts(value: Any) -> None:
    with pytest.raises(ValueError, match="is not a finite number of credits"):
        recorded_credits_to_micro(value)
    with pytest.raises(ValueError, match=r"is not .*number of credits"):
        credits_to_micro(value)


@pytest.mark.parametrize(
    "value",
    ["1_000", "\u0663", "\u0661.\u0665", "\uff12", " 2.5 ", " 2.5", "2.5 ", "2.5\n", "\t2",
     "+2.5", ".5", "2.", "1e2", "1E2", "1e-6", "0x10", "--1", "2..5", "2.5.1", "- 2"],
)
def test_only_plain_digits_are_credits(value: str) -> None:
    """Python's Decimal takes each of these ("1_000" is 1000, Arabic-Indic three is 3, spaces
    are stripped); a person reading the spec or the ledger's memo might read another amount."""
    with pytest.raises(ValueError, match="is not a number of credits: write digits") as info:
        credits_to_micro(value)
    assert repr(value) in str(info.value)
    with pytest.raises(ValueError, match="is not a number of credits"):
        price_to_micro(value)


@pytest.mark.parametrize(("value", "micro"), [("1e3", 10**9), ("1e-6", 1), (" 2.5", 2_500_000)])
def test_a_recorded_amount_reads_as_it_was_admitted(value: str, micro: int) -> None:
    """A spec stored before the plain form was required (JobSpec.recorded) still reads."""
    assert recorded_credits_to_micro(value) == micro


@pytest.mark.parametrize("value", ["2.0000001", "0.0000001", 1e-7, "-0.0000005"])
def test_more_than_six_decimal_places(value: Any) -> None:
    with pytest.raises(ValueError, match="has more than 6 decimal places"):
        credits_to_micro(value)


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (0, "0"),
        (1, "0.000001"),
        (10, "0.00001"),
        (2_500_000, "2.5"),
        (100_000_000, "100"),
        (1_000_001, "1.000001"),
        (123_456_654_321, "123456.654321"),
        (-1, "-0.000001"),
        (-2_500_000, "-2.5"),
        (-100_000_000, "-100"),
    ],
)
def test_micro_to_credits(micro: int, text: str) -> None:
    assert micro_to_credits(micro) == text


@pytest.mark.parametrize(
    "micro", [0, 1, 9, 10, 999_999, 1_000_000, 1_000_001, 2_500_000, -7, -1_234_567, 2**63 - 1]
)
def test_rendering_parses_back_to_the_same_amount(micro: int) -> None:
    assert credits_to_micro(micro_to_credits(micro)) == micro


@pytest.mark.parametrize(
    ("gpu_ms", "price", "cost"),
    [
        (3_600_000, 2_500_000, 2_500_000),  # one GPU-hour at 2.5 credits
        (1_800_000, 1_000_000, 500_000),  # half an hour, exact
        (0, 2_500_000, 0),
        (1, 1, 1),  # 1/3_600_000 of a micro-credit is still charged as 1
        (1, 3_599_999, 1),
        (1, 3_600_000, 1),
        (1, 3_600_001, 2),
        (3_600_001, 1, 2),
        (1_234_567, 1_000_000, 342_936),  # 342_935.27...
        (7 * 24 * 3_600_000 * 64, 1_000_000, 7 * 24 * 64 * MICRO),
    ],
)
def test_cost_of_gpu_time_rounds_up(gpu_ms: int, price: int, cost: int) -> None:
    assert cost_of_gpu_time(gpu_ms, price) == cost


def test_cost_never_undercharges() -> None:
    for gpu_ms in (1, 17, 999, 59_999, 3_599_999, 3_600_001):
        for price in (1, 3, 999_999, 2_500_000):
            cost = cost_of_gpu_time(gpu_ms, price)
            assert cost * 3_600_000 >= gpu_ms * price
            assert (cost - 1) * 3_600_000 < gpu_ms * price


@pytest.mark.parametrize(
    "value", ["12345678901234567890123.456789", "12345678901234567890123.0000019"]
)
def test_huge_amounts_are_exact_or_refused(value: str) -> None:
    try:
        micro = credits_to_micro(value)
    except ValueError:
        return
    with localcontext() as ctx:
        ctx.prec = 100
        exact = Decimal(value) * MICRO
    assert micro == exact


@pytest.mark.parametrize("value", ["1" + "0" * 400, "1" + "0" * 18, -(10**18), 1e18])
def test_absurd_amounts_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="more credits than exist"):
        credits_to_micro(value)
    with pytest.raises(ValueError, match="more credits than exist"):
        recorded_credits_to_micro("1e400")
