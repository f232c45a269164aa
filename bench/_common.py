"""What every bench shares: progress on stderr, figures as JSON lines on stdout, percentiles,
a process's CPU time, and a bounded fan-out."""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from infra.settings import Settings

T = TypeVar("T")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def postgres_schema(prefix: str, home: Path) -> Iterator[Settings]:
    """Settings for a fresh PostgreSQL schema of its own, dropped afterwards."""
    import psycopg

    from infra.settings import Settings

    schema = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    settings = Settings(home=home, event_store="postgres", pg_schema=schema)
    with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield settings
    finally:
        with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def emit_line(bench: str, metric: str, value: float, unit: str, labels: dict[str, Any]) -> None:
    """One figure of `bench`, one JSON line on stdout."""
    print(json.dumps({"bench": bench, "metric": metric, "value": value, "unit": unit,
                      **labels}), flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p% of values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (Linux; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bounded(items: list[T], limit: int, fn: Callable[[T], Awaitable[Any]]) -> list[Any]:
    """fn over every item, at most `limit` at a time; the results in the items' order."""
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> Any:
        async with gate:
            return await fn(item)

    return await asyncio.gather(*(one(i) for i in items))
