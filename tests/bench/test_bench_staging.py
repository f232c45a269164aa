"""`python -m bench staging --quick --skip-s3` runs end to end, prints its figures, cleans up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LABELS = {"size_mib": 64, "repeat": 3, "stat": "median", "cache": "warm"}


@pytest.mark.e2e
def test_quick_run_prints_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "staging", "--quick", "--skip-s3",
         "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # nothing but JSON lines
    assert len(lines) == 4, done.stdout
    figures = {(line["metric"], line["backend"]): line for line in lines}
    for backend in ("filesystem", "copy"):
        rate = figures["throughput_mib_per_s", backend]
        ratio = figures["ratio_to_copy", backend]
        assert rate["unit"] == "MiB/s" and ratio["unit"] == "ratio"
        for line in (rate, ratio):
            assert line["bench"] == "staging"
            assert LABELS.items() <= line.items(), line
            assert isinstance(line["value"], int | float) and line["value"] > 0, line
    assert figures["ratio_to_copy", "copy"]["value"] == 1.0
    fs_rate = figures["throughput_mib_per_s", "filesystem"]["value"]
    copy_rate = figures["throughput_mib_per_s", "copy"]["value"]
    assert figures["ratio_to_copy", "filesystem"]["value"] == pytest.approx(
        fs_rate / copy_rate, abs=0.002
    )
    assert "round 3/3: filesystem" in done.stderr  # every round was timed, and said so
    assert list(tmp_path.iterdir()) == []  # the input, the stores and the scratch are gone
