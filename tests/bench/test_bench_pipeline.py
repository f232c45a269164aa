"""`python -m bench pipeline --quick` runs end to end and prints every figure the issue asks for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = {
    "baseline_workflows_per_s": "workflows/s",
    "pipeline_jobs_per_s": "jobs/s",
    "ratio_to_temporal": "ratio",
    "submit_to_running_p50_ms": "ms",
    "submit_to_running_p99_ms": "ms",
}


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_quick_run_prints_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "pipeline", "--quick"], cwd=ROOT, capture_output=True,
        text=True, timeout=540,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # nothing but JSON lines
    assert sorted(line["metric"] for line in lines) == sorted(EXPECTED), done.stdout
    for line in lines:
        assert line["bench"] == "pipeline"
        assert line["unit"] == EXPECTED[line["metric"]], line
        assert isinstance(line["value"], int | float) and line["value"] > 0, line
    figures = {line["metric"]: line for line in lines}
    base = figures["baseline_workflows_per_s"]["value"]
    ours = figures["pipeline_jobs_per_s"]["value"]
    assert figures["ratio_to_temporal"]["value"] == pytest.approx(ours / base, rel=0.01)
    assert figures["submit_to_running_p50_ms"]["value"] <= figures["submit_to_running_p99_ms"][
        "value"
    ]
    # The baseline ran as many activities as a real job did, read from that job's history.
    activities = figures["baseline_workflows_per_s"]["activities"]
    assert f"a job runs {activities} activities: admit_job, allocate_gpus" in done.stderr
