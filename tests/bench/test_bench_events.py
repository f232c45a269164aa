"""`python -m bench events --quick` runs end to end and prints every figure the issue asks for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

EXPECTED: list[tuple[str, str, dict[str, Any]]] = [
    ("append_events_per_s", "events/s", {"store": "sqlite", "mode": "single"}),
    ("append_events_per_s", "events/s", {"store": "sqlite", "mode": "batched"}),
    ("append_events_per_s", "events/s", {"store": "postgres", "mode": "single"}),
    ("append_events_per_s", "events/s", {"store": "postgres", "mode": "batched"}),
    ("rebuild_events_per_s", "events/s", {"store": "sqlite"}),
    ("rebuild_events_per_s", "events/s", {"store": "postgres"}),
    ("subscriber_latency_p50_ms", "ms", {"subscribers": 100}),
    ("subscriber_latency_p99_ms", "ms", {"subscribers": 100}),
    ("own_job_latency_p50_ms", "ms", {"subscribers": 10}),
    ("own_job_latency_p99_ms", "ms", {"subscribers": 10}),
    ("idle_subscription_kib", "KiB", {"subscribers": 50}),
]


def run_bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout,
    )


@pytest.mark.e2e
def test_quick_run_prints_every_figure() -> None:
    done = run_bench("events", "--quick", timeout=600)  # own jobs: a whole network starts
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # nothing but JSON lines
    assert len(lines) == len(EXPECTED), done.stdout
    for metric, unit, labels in EXPECTED:
        found = [
            line for line in lines
            if line["metric"] == metric and labels.items() <= line.items()
        ]
        assert len(found) == 1, f"{metric} {labels}: {found} in\n{done.stdout}"
        line = found[0]
        assert line["bench"] == "events"
        assert line["unit"] == unit
        assert isinstance(line["value"], int | float) and line["value"] > 0, line
    for kind in ("subscriber", "own_job"):
        p50, p99 = (
            next(line["value"] for line in lines if line["metric"] == m)
            for m in (f"{kind}_latency_p50_ms", f"{kind}_latency_p99_ms")
        )
        assert p50 <= p99
    own = next(line for line in lines if line["metric"] == "own_job_latency_p99_ms")
    assert own["most_live"] >= 1 and own["events"] >= 20  # every job's events, seen live
    assert "views check: job_events=" in done.stderr  # the rebuild was checked, not just timed


def test_unknown_bench_lists_the_names() -> None:
    done = run_bench("nosuch", timeout=30)
    assert done.returncode == 2
    assert "unknown bench 'nosuch'" in done.stderr
    assert "events" in done.stderr.splitlines()[-1]
