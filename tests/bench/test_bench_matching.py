"""`python -m bench matching --quick` runs against PostgreSQL and prints every figure once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
METRICS = {
    "allocations_per_s": "allocations/s",
    "decision_p50_ms": "ms",
    "decision_p99_ms": "ms",
    "heartbeats_per_s": "heartbeats/s",
}


@pytest.mark.e2e
def test_quick_run_prints_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "matching", "--quick"], cwd=ROOT, capture_output=True,
        text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # nothing but JSON lines
    assert sorted(line["metric"] for line in lines) == sorted(METRICS)
    for line in lines:
        assert line["bench"] == "matching"
        assert line["unit"] == METRICS[line["metric"]]
        assert line["store"] == "postgres"
        assert isinstance(line["value"], int | float) and line["value"] > 0, line
    figures = {line["metric"]: line["value"] for line in lines}
    assert figures["decision_p50_ms"] <= figures["decision_p99_ms"]
    assert "placed 200 jobs" in done.stderr  # every queued job was placed
