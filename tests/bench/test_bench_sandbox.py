"""`python -m bench sandbox` prints every figure once, as JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from worker_gpu.sandbox import Bwrap

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not Bwrap.installed(), reason="bubblewrap is not installed")
def test_one_round_prints_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "sandbox", "--repeat", "1"], cwd=ROOT,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # nothing but JSON lines
    starts = {(x["measure"], x["job"], x["runtime"]) for x in lines if x["metric"] == "start_ms"}
    assert starts == {(m, j, r) for m in ("launch", "runtime") for j in ("true", "python")
                      for r in ("bwrap", "plain")}  # fmt: skip
    overheads = [x for x in lines if x["metric"] == "overhead_ms"]
    assert len(overheads) == 4
    assert all(x["unit"] == "ms" and x["value"] > -1000 for x in lines)
    assert all(x["value"] > 0 for x in lines if x["metric"] == "start_ms")
