"""`python -m bench verification --quick` prints every figure the issue asks for, and they hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import verification

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ("none", "redundant", "adaptive")
METRICS = ("wrong_accepted_share", "detection_rate", "extra_gpu_time_share",
           "honest_penalised_share")


def figures(stdout: str) -> dict[tuple[str, str], float]:
    lines = [json.loads(line) for line in stdout.splitlines()]  # nothing but JSON lines
    assert len(lines) == len(METRICS) * len(POLICIES) + 2, stdout
    found: dict[tuple[str, str], float] = {}
    for line in lines:
        assert line["bench"] == "verification"
        assert line["unit"] == "fraction"
        assert isinstance(line["value"], int | float) and 0 <= line["value"] <= 2, line
        label = line.get("policy", line.get("comparator"))
        assert (line["metric"], label) not in found, line
        found[line["metric"], label] = line["value"]
    return found


def test_quick_run_prints_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "verification", "--quick"], cwd=ROOT,
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = figures(done.stdout)
    for metric in METRICS:
        for policy in POLICIES:
            assert (metric, policy) in found, f"{metric} {policy} missing from\n{done.stdout}"
    # accepting everything costs nothing and catches nothing
    assert found["extra_gpu_time_share", "none"] == 0
    assert found["detection_rate", "none"] == 0
    assert found["wrong_accepted_share", "none"] > 0.01  # the cheaters do cheat
    # k=2 for every reproducible job: a whole second run of each, every wrong result caught
    assert found["extra_gpu_time_share", "redundant"] >= 1.0 - verification.NONDETERMINISTIC_SHARE
    assert found["detection_rate", "redundant"] == 1.0
    assert found["wrong_accepted_share", "redundant"] == 0
    # adaptive: far cheaper than k=2, far fewer wrong results than none
    assert found["extra_gpu_time_share", "adaptive"] < found["extra_gpu_time_share", "redundant"]
    assert found["extra_gpu_time_share", "adaptive"] < 0.5
    assert found["wrong_accepted_share", "adaptive"] < found["wrong_accepted_share", "none"] / 2
    # honest but nondeterministic jobs (20%) are never compared: no honest provider is blamed
    for policy in POLICIES:
        assert found["honest_penalised_share", policy] == 0
    # byte equality flags the honest float outputs (30% of jobs); the declared comparator does not
    assert 0.2 < found["false_alarm_share", "exact"] < 0.4
    assert found["false_alarm_share", "numeric"] == 0
    assert "adaptive" in done.stderr and "gpu units" in done.stderr


def test_the_same_seed_gives_the_same_figures(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--jobs", "600", "--providers", "20", "--seed", "7"]
    assert verification.main(args) == 0
    first = capsys.readouterr().out
    assert verification.main(args) == 0
    assert capsys.readouterr().out == first
    assert verification.main([*args[:-1], "8"]) == 0
    assert capsys.readouterr().out != first
