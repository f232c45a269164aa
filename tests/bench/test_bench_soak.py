"""`python -m bench soak --quick` runs end to end within its deadline, prints every figure,
exits as its invariants say, and keeps the books whatever else fails.

Every invariant must hold: every job ends within its bound, no GPU stays reserved, the
ledger sums to zero, no escrow is left open and no two runs of a job share an owner (exit 0).
The network's own check runs are on; the providers have several owners, so replicas run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 120
EXPECTED = {
    "jobs": "jobs", "jobs_terminal": "jobs", "jobs_not_terminal": "jobs", "max_overrun_s": "s",
    "read_model_mismatches": "jobs", "jobs_run_more_than_once": "jobs", "gpus_reserved": "gpus",
    "ledger_sum_micro": "micro-credits",
    "lopsided_transfers": "transfers", "open_escrows": "escrows", "wall_time_s": "s",
    "failures": "invariants",
}
def soak(home: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "soak", "--quick", "--deadline-s", str(DEADLINE_S),
         "--home", str(home), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=540,
    )
    return done, time.monotonic() - began


def figures_of(done: subprocess.CompletedProcess[str], took: float) -> dict[str, Any]:
    """Every figure, checked for what holds whatever the network does."""
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # nothing but JSON lines
    assert [line["metric"] for line in lines] and all(
        line["bench"] == "soak" for line in lines), done.stdout
    figures = {line["metric"]: line for line in lines}
    assert sorted(figures) == sorted(EXPECTED), (done.stdout, done.stderr[-3000:])
    for metric, unit in EXPECTED.items():
        assert figures[metric]["unit"] == unit, figures[metric]
        assert isinstance(figures[metric]["value"], int | float), figures[metric]

    # Bounded: the network starts (under a minute), then the soak's own deadline, the audit.
    assert figures["wall_time_s"]["value"] <= DEADLINE_S + 5, figures["wall_time_s"]
    assert took < DEADLINE_S + 240, f"the soak took {took:.0f} s"
    # Every planned job was submitted, through both faults.
    jobs = figures["jobs"]
    assert jobs["value"] == jobs["planned"] == 20 and jobs["submit_errors"] == 0, jobs
    assert sum(jobs["cancelled_at"].values()) >= 1, jobs
    faults = figures["wall_time_s"]["faults"]
    assert len(faults) == 2 and "killed -9" in faults[0] and faults[1].startswith("api"), faults
    counted = figures["jobs_terminal"]["value"] + figures["jobs_not_terminal"]["value"]
    assert counted == jobs["value"], (figures["jobs_terminal"], figures["jobs_not_terminal"])
    # The books hold however jobs ended.
    for metric in ("ledger_sum_micro", "lopsided_transfers", "open_escrows",
                   "read_model_mismatches"):
        assert figures[metric]["value"] == 0, figures[metric]
    # Replicas, checks and verifiers ran, each of a job's runs on another owner's provider.
    several = figures["jobs_run_more_than_once"]
    assert several["value"] >= 1 and several["shared_owner"] == 0, several

    failed = figures["failures"]["failed"]
    assert figures["failures"]["value"] == len(failed)
    assert done.returncode == (1 if failed else 0), (done.returncode, failed)
    for failure in failed:
        assert f"FAILED: {failure}" in done.stderr
    if figures["jobs_not_terminal"]["value"]:
        assert any("no terminal state" in f for f in failed), failed
    return figures


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_quick_soak_holds_every_invariant_within_its_deadline(tmp_path: Path) -> None:
    done, took = soak(tmp_path)
    figures = figures_of(done, took)
    assert done.returncode == 0, (figures["failures"], done.stderr[-3000:])
    assert figures["jobs_terminal"]["value"] == 20 and figures["gpus_reserved"]["value"] == 0
    assert figures["max_overrun_s"]["value"] <= 90, figures["max_overrun_s"]
