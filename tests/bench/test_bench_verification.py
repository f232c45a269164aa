"""`python -m bench verification` prints its nine figures, and adaptive costs far less than k=2."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_verification_prints_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "verification", "--quick"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    figures = {(x["metric"], x.get("policy")): x["value"] for x in lines}
    for metric in ("wrong_accepted_share", "detection_rate", "extra_gpu_time_share"):
        for policy in ("none", "redundant", "adaptive"):
            assert isinstance(figures[(metric, policy)], int | float)
    assert all(x["bench"] == "verification" for x in lines)
    assert figures[("extra_gpu_time_share", "none")] == 0
    assert figures[("detection_rate", "redundant")] == 1.0
    assert (figures[("extra_gpu_time_share", "adaptive")]
            < figures[("extra_gpu_time_share", "redundant")])
    assert figures[("wrong_accepted_share", "adaptive")] < figures[("wrong_accepted_share",
                                                                     "none")]
