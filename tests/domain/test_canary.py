"""Known-answer canaries: the job and its answer from a seed, the judgement, the Network's
start and close (idempotent, paid from the verification account, reputation recorded)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from domain.application import Network
from domain.canary import (
    ExpectedOutput,
    canary_client_id,
    judge_canary,
    make_canary,
    new_seed,
    program,
    staged_inputs,
    sweep,
)
from domain.errors import UnknownJob
from domain.ledger import CHECKS, provider_account
from protocol import digest
from protocol.money import cost_of_gpu_time

SEED = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
GPUS = [{"index": 0, "model": "H100", "memory_mb": 81920},
        {"index": 1, "model": "H100", "memory_mb": 81920}]


def run_locally(tmp_path: Path, seed: str, runtimes: list[str]) -> tuple[bytes, bytes]:
    """Run the canary's command as a provider would (cwd = its work dir), return (got, expected)."""
    task = make_canary(seed, 1_000_000, runtimes, image="busybox")
    assert task is not None
    for ref, data in staged_inputs(task.spec):
        (tmp_path / ref.target).write_bytes(data)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **task.spec.env}
    done = subprocess.run(task.spec.command, cwd=tmp_path, env=env, capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return (tmp_path / task.spec.outputs[0]).read_bytes(), task.answer


def test_the_same_seed_gives_the_same_canary_and_answer() -> None:
    a, b = make_canary(SEED, 2_500_000, ["process"]), make_canary(SEED, 2_500_000, ["process"])
    assert a == b and a is not None
    other = make_canary(OTHER, 2_500_000, ["process"])
    assert other is not None
    assert other.answer != a.answer and other.job_id != a.job_id
    assert other.client_id != a.client_id
    assert a.expected[0].digest == digest.of_bytes(a.answer)
    assert a.expected[0].size == len(a.answer)


def test_a_canary_looks_like_an_ordinary_job() -> None:
    task = make_canary(SEED, 2_500_000, ["process"])
    assert task is not None
    assert uuid.UUID(task.job_id).version == 4  # like the API's uuid4 job ids
    assert task.client_id == canary_client_id(SEED) and "network" not in task.client_id
    spec = task.spec
    assert spec.command[0] == "python3" and spec.command[1] == spec.inputs[0].target
    assert spec.max_price_micro == 2_500_000 and spec.image is None
    assert spec.inputs[0].digest == digest.of_bytes(program())
    script = program().decode()
    assert "canary" not in script.lower() and "known" not in script.lower()
    assert task.files == {spec.inputs[0].key: program()}


def test_the_python_program_computes_the_known_answer(tmp_path: Path) -> None:
    got, expected = run_locally(tmp_path, SEED, ["process"])
    assert got == expected == sweep(SEED, int(expected.split()[1])).encode()


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs sha256sum")
def test_the_shell_form_computes_the_known_answer(tmp_path: Path) -> None:
    task = make_canary(SEED, 1_000_000, ["docker"], image="busybox")
    assert task is not None and task.spec.image == "busybox" and not task.spec.inputs
    got, expected = run_locally(tmp_path, SEED, ["docker"])
    assert got == expected


def test_no_canary_fits_a_container_only_provider_without_an_image() -> None:
    assert make_canary(SEED, 1_000_000, ["docker"]) is None


def test_seeds_are_checked() -> None:
    with pytest.raises(ValueError):
        make_canary("not-hex", 1_000_000, ["process"])
    assert len(new_seed(bytes(16))) == 32
    with pytest.raises(ValueError):
        new_seed(b"short")


WANT = [ExpectedOutput("out.txt", "a" * 64, 10)]


@pytest.mark.parametrize(
    ("exit_code", "timed_out", "manifest", "missing", "problems", "outcome"),
    [
        (0, False, [("out.txt", "a" * 64, 10)], [], [], "success"),
        (0, False, [("out.txt", "b" * 64, 12)], [], [], "mismatch"),
        (0, False, [("out.txt", "a" * 64, 10)], [], ["out.txt: not in storage"], "mismatch"),
        (None, True, [], ["out.txt"], [], "timeout"),
        (1, False, [("out.txt", "a" * 64, 10)], [], [], "failure"),
        (0, False, [], ["out.txt"], [], "failure"),
    ],
)
def test_judging_a_canary(
    exit_code: int | None, timed_out: bool, manifest: list[tuple[str, str, int]],
    missing: list[str], problems: list[str], outcome: str,
) -> None:
    judged = judge_canary(WANT, exit_code, timed_out, manifest, missing, problems)
    assert judged.outcome == outcome
    assert judged.honest == (outcome == "success")


def _provider(app: Network, provider_id: str = "p1", price: int = 3_600_000) -> None:
    app.register_provider(provider_id, "local", price, GPUS)


def test_a_canary_is_reserved_on_exactly_its_provider(app: Network) -> None:
    _provider(app)
    assert not app.start_canary("job-1", "p1", SEED, online=set()).started  # offline
    started = app.start_canary("job-1", "p1", SEED, online={"p1"})
    assert started.started and started.gpu_indexes == (0,)
    assert app.start_canary("job-1", "p1", SEED, online={"p1"}) == started  # a retry
    assert app.provider("p1").reservations == {started.job_id: [0]}
    job = app.job(started.job_id)
    assert job.client_id == started.client_id and job.allocations == {1: "p1"}
    canary = app.canary("job-1", "p1")
    assert canary is not None and canary.job_id == started.job_id and canary.outcome is None
    # Busy: the other GPU goes to a second canary, then nothing is free.
    assert app.start_canary("job-2", "p1", OTHER, online={"p1"}).gpu_indexes == (1,)
    busy = app.start_canary("job-3", "p1", "1" * 32, online={"p1"})
    assert not busy.started and "no free GPU" in busy.reason
    assert app.canary("job-3", "p1") is None
    assert not app.start_canary("job-1", "nobody", SEED, online={"nobody"}).started


def test_an_honest_canary_is_paid_from_the_verification_account(app: Network) -> None:
    _provider(app, price=3_600_000)  # 1 micro-credit per GPU-millisecond
    started = app.start_canary("job-1", "p1", SEED, online={"p1"})
    ended = app.close_canary("job-1", "p1", "success", "outputs equal the known answer", 1234)
    assert (ended.outcome, ended.paid_micro) == ("success", cost_of_gpu_time(1234, 3_600_000))
    assert app.close_canary("job-1", "p1", "success", "again", 1234) == ended  # a retry
    assert app.balance(provider_account("p1")) == 1234
    assert app.balance(CHECKS) == -1234
    provider = app.provider("p1")
    assert provider.outcomes == ["success"] and provider.reservations == {}
    job = app.job(started.job_id)
    assert job.state == "SUCCEEDED" and job.settlement == {
        "charged_micro": 0, "provider_paid_micro": 1234, "fee_micro": 0, "refunded_micro": 0,
    }


def test_a_wrong_canary_is_not_paid_and_costs_reputation(app: Network) -> None:
    _provider(app)
    app.record_reputation("earlier", "p1", "success")
    before = app.provider("p1").reputation
    started = app.start_canary("job-1", "p1", SEED, online={"p1"})
    ended = app.close_canary("job-1", "p1", "mismatch", "sha256 differs", 5000)
    assert (ended.outcome, ended.paid_micro) == ("mismatch", 0)
    assert app.balance(provider_account("p1")) == 0 and app.balance(CHECKS) == 0
    provider = app.provider("p1")
    assert provider.outcomes == ["success", "mismatch"] and provider.reputation < before
    assert app.job(started.job_id).state == "FAILED"


def test_a_lost_canary_records_no_second_outcome(app: Network) -> None:
    _provider(app)
    started = app.start_canary("job-1", "p1", SEED, online={"p1"})
    app.provider_lost(started.job_id, 1, "p1", "stopped answering")
    ended = app.close_canary("job-1", "p1", "lost", "p1 stopped answering", 0)
    assert ended.outcome == "lost"
    assert app.provider("p1").outcomes == ["lost"]
    with pytest.raises(UnknownJob):
        app.close_canary("job-9", "p1", "success", "", 1)
