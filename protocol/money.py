"""Money is an integer number of micro-credits; these are the only conversions."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation, localcontext

MICRO = 1_000_000
MS_PER_HOUR = 3_600_000


# Credits as text: ASCII digits, a point and digits after it if any, a minus sign at most
# ("-1" is then refused as not more than 0, in words). Nothing a reader could misread or a
# parser reads otherwise: no "1_000", "+2", ".5", "2.", "1e3", spaces or Arabic-Indic digits
# (Python's Decimal and int take all of these).
WRITTEN = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def credits_to_micro(value: str | int | float | Decimal) -> int:
    """Parse a credit amount as written by a person ("2.5", 3) into micro-credits exactly.
    Text must be plain (WRITTEN); a number (JSON's, YAML's) is read by its shortest form."""
    if isinstance(value, str) and not WRITTEN.fullmatch(value):
        raise ValueError(f"{shown(value)} is not a number of credits: write digits, and a "
                         "point and digits after it for a fraction, such as \"2.5\" or \"0.5\"")
    return recorded_credits_to_micro(value)


def recorded_credits_to_micro(value: str | int | float | Decimal) -> int:
    """An amount as a record made before WRITTEN holds it ("1e3"): read as Decimal reads
    it, exactly, refused past the bounds."""
    if isinstance(value, bool):
        raise ValueError("must be a number of credits, not a boolean")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{shown(str(value))} is not a number of credits") from None
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not a finite number of credits")
    if abs(amount) >= 10**18:
        raise ValueError(f"{value!r} is more credits than exist")
    with localcontext() as ctx:
        ctx.prec = 60  # exact for every amount below the bound above
        micro = amount * MICRO
    if micro != micro.to_integral_value():
        raise ValueError(f"{value!r} has more than 6 decimal places")
    return int(micro)


def price_to_micro(value: str | int | float | Decimal) -> int:
    """A price per GPU-hour in credits, as a person writes it, into micro-credits: more than
    0 and at most the network's maximum. The one check of a price (spec, API, CLI, agent)."""
    from protocol.limits import MAX_PRICE_MICRO

    micro = credits_to_micro(value)
    if micro <= 0:
        raise ValueError(f"must be more than 0 credits, got {value}")
    if micro > MAX_PRICE_MICRO:
        raise ValueError(f"must be at most {MAX_PRICE_MICRO // MICRO} credits, got {value}")
    return micro


def shown(value: str, limit: int = 40) -> str:
    """A value for a message: its repr, cut short."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


def micro_to_credits(micro: int) -> str:
    """Render micro-credits for people: '2.5', '0.000001'."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:06d}".rstrip("0")


def cost_of_gpu_time(gpu_ms: int, price_per_gpu_hour_micro: int) -> int:
    """Charge for GPU time, rounded up to the next micro-credit."""
    return -(-gpu_ms * price_per_gpu_hour_micro // MS_PER_HOUR)
