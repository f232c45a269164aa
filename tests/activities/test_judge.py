"""The verdict over a job's runs (activities/verify.py) against a real filesystem store:
storage, not the provider, says what is missing; a job not declared reproducible is compared
by how its runs ended and which outputs they left; runs with no majority blame no one."""

from __future__ import annotations

from pathlib import Path

from activities.verify import judge, output_key
from infra.storage import FilesystemStore
from protocol import digest
from protocol.spec import JobSpec
from workflows import contracts as c

CLIENT, JOB = "alice", "job-1"


def spec(**verification: object) -> JobSpec:
    return JobSpec.model_validate({
        "name": "j", "command": ["true"], "outputs": ["out.txt"],
        "max_price_per_gpu_hour": "1", "timeout": "1m",
        "verification": verification,
    })


def run(store: FilesystemStore, attempt: int, body: bytes | None, exit_code: int = 0,
        reported_missing: bool = False) -> c.ReplicaReport:
    """A run's report; `body` is what its grant wrote (None: nothing)."""
    manifest, missing = [], []
    if body is not None:
        key = output_key(JOB, "out.txt", attempt)
        store.put(CLIENT, key, [body], digest.of_bytes(body))
        if not reported_missing:
            manifest = [c.ManifestEntry("out.txt", key, digest.of_bytes(body),
                                        len(body))]
    if body is None or reported_missing:
        missing = ["out.txt"]
    return c.ReplicaReport(attempt, f"p{attempt}", 0, exit_code, False, 0, manifest, missing)


def test_an_output_reported_missing_that_its_run_wrote_contradicts_storage(
    tmp_path: Path,
) -> None:
    store = FilesystemStore(tmp_path)
    verdict, winner = judge(store, CLIENT, JOB, spec(),
                            [run(store, 1, b"x", reported_missing=True)], may_add_run=True)
    assert (verdict.accepted, verdict.mismatched_attempts, winner) == (False, [1], None)
    assert verdict.contradicted_attempts == [1]  # storage's word: the run is blamed
    assert "reported missing but in storage" in verdict.reason


def test_runs_of_a_job_not_declared_reproducible_are_compared_by_presence(
    tmp_path: Path,
) -> None:
    """Other bytes, same ending and outputs: they agree. An empty-handed run and one that
    delivered do not; nor do two empty-handed runs that ended differently."""
    store = FilesystemStore(tmp_path)
    a, b = run(store, 1, b"one"), run(store, 2, b"two")
    verdict, winner = judge(store, CLIENT, JOB, spec(), [a, b], may_add_run=True)
    assert (verdict.accepted, verdict.accepted_attempts, winner) == (True, [1, 2], 1)
    empty, full = run(store, 3, None), run(store, 4, b"four")
    verdict, _ = judge(store, CLIENT, JOB, spec(), [empty, full], may_add_run=True)
    assert not verdict.decided
    both = judge(store, CLIENT, JOB, spec(), [empty, run(store, 5, None)], may_add_run=True)[0]
    assert both.accepted_attempts == [3, 5] and not both.succeeded
    assert "declared outputs missing" in both.reason
    other = judge(store, CLIENT, JOB, spec(), [empty, run(store, 6, None, exit_code=1)],
                  may_add_run=True)[0]
    assert not other.decided


def test_three_reproducible_runs_with_no_majority_blame_no_one(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    reports = [run(store, 1, b"one"), run(store, 2, b"two"), run(store, 3, b"three")]
    verdict, winner = judge(store, CLIENT, JOB, spec(reproducible=True), reports,
                            may_add_run=False)
    assert (verdict.accepted, verdict.mismatched_attempts, winner) == (False, [], None)
    assert "not reproducible as declared" in verdict.reason
    two = judge(store, CLIENT, JOB, spec(reproducible=True),
                [*reports[:2], run(store, 4, b"one")], may_add_run=False)[0]
    assert (two.accepted_attempts, two.mismatched_attempts) == ([1, 4], [2])
    # Outvoted, not contradicted: rejected (unpaid) but not blamed (workflows/runs.py).
    assert two.contradicted_attempts == []


def test_a_failed_run_agrees_with_a_failed_check_and_not_with_one_that_succeeds(
    tmp_path: Path,
) -> None:
    """The network's check of a failed run (workflows/runs.py `unproven_ending`): a failure
    is one whatever its code; a run that failed never agrees with one that exited 0, also
    where both wrote the same bytes (a job declared reproducible, compared by bytes)."""
    store = FilesystemStore(tmp_path)
    failed, check = run(store, 1, None, exit_code=1), run(store, 2, None, exit_code=137)
    verdict, winner = judge(store, CLIENT, JOB, spec(), [failed, check], may_add_run=True)
    assert (verdict.accepted_attempts, winner, verdict.succeeded) == ([1, 2], 1, False)
    assert verdict.reason.startswith("the command exited with code 1")
    delivered = run(store, 3, b"out")
    assert not judge(store, CLIENT, JOB, spec(), [failed, delivered], may_add_run=True)[0].decided
    same_bytes = [run(store, 4, b"same", exit_code=1), run(store, 5, b"same")]
    verdict, _ = judge(store, CLIENT, JOB, spec(reproducible=True), same_bytes,
                       may_add_run=True)
    assert not verdict.decided
    both = [run(store, 6, b"same", exit_code=2), run(store, 7, b"same", exit_code=1)]
    verdict, _ = judge(store, CLIENT, JOB, spec(reproducible=True), both, may_add_run=True)
    assert verdict.accepted_attempts == [6, 7] and not verdict.succeeded


def test_a_job_admitted_with_an_output_storage_refuses_is_judged_not_failed(
    tmp_path: Path,
) -> None:
    """The red team's long output path: a spec recorded before paths were bounded names an
    output whose key storage refuses (past the key's bound). Its runs could not upload it;
    verification says so (missing, as storage is the witness) instead of failing on storage's
    refusal of the key, which failed the workflow and refunded every run (two free runs)."""
    store = FilesystemStore(tmp_path)
    long = "out/" + "/".join(["\U0001d552" * 63] * 15) + "/" + "\U0001d552" * 50
    job = JobSpec.recorded({"name": "j", "command": ["true"], "outputs": [long],
                            "max_price_per_gpu_hour": "1", "timeout": "1m"})
    honest = [c.ReplicaReport(n, f"p{n}", 0, 0, False, 0, [], [long]) for n in (1, 2)]
    verdict, winner = judge(store, CLIENT, JOB, job, honest, may_add_run=False)
    assert (verdict.accepted_attempts, winner, verdict.succeeded) == ([1, 2], 1, False)
    assert verdict.reason.startswith("declared outputs missing: out/")
    # A provider that says it uploaded it reports what storage could never have taken.
    key = output_key(JOB, long, 3)
    lying = c.ReplicaReport(3, "p3", 0, 0, False, 0,
                            [c.ManifestEntry(long, key, digest.of_bytes(b"x"), 1)], [])
    verdict, winner = judge(store, CLIENT, JOB, job, [lying], may_add_run=True)
    assert (verdict.mismatched_attempts, verdict.contradicted_attempts, winner) == ([3], [3], None)
    assert "reported uploaded but storage refuses its key" in verdict.reason
