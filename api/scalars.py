"""The schema's own scalar: BigInt, for money in micro-credits beyond GraphQL's 32 bits."""

from __future__ import annotations

from typing import Any, NewType

import strawberry

BigInt = NewType("BigInt", int)
INT64 = 2**63


def parse_big_int(value: Any) -> int:
    """A whole number a signed 64-bit integer holds (what the stores hold), or refused."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("BigInt: must be a whole number")
    try:
        number = int(value)
    except ValueError:
        raise ValueError("BigInt: must be a whole number") from None
    if not -INT64 < number < INT64:
        raise ValueError("BigInt: must be within a signed 64-bit integer")
    return number


BIG_INT_SCALAR = strawberry.scalar(
    NewType("BigInt", int),
    name="BigInt",
    serialize=int,
    parse_value=parse_big_int,
    description="An integer beyond GraphQL's 32 bits: money is in micro-credits.",
)
