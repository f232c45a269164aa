"""Runs whose outputs the client's storage quota refused (the storage API's record, Job
`OutputRefused`) do not vote (activities/verify.py `judge`), against a real filesystem store,
and what that comes to in pay and reputation (workflows/runs.py). A provider's own word that
storage refused it is no such record: its run votes as any empty-handed run."""

from __future__ import annotations

from pathlib import Path

import workflows.runs as runs_
from activities.verify import judge
from infra.storage import FilesystemStore
from protocol.spec import JobSpec
from tests.activities.test_judge import CLIENT, JOB, run, spec
from workflows import contracts as c

REFUSED = {"out.txt": "out.txt: refused, alice's storage quota is 65536 bytes"}


def refused_run(store: FilesystemStore, attempt: int) -> c.ReplicaReport:
    """A run that exited 0 and whose upload storage refused: nothing stored, the provider
    says why (its own word, `refused`)."""
    r = run(store, attempt, None)
    r.refused = dict(REFUSED)
    return r


def settled(job_spec: JobSpec, reports: list[c.ReplicaReport], verdict: c.Verdict,
            payers: list[str]) -> tuple[list[c.PaymentLine], dict[str, str]]:
    """What JobWorkflow pays and records for these runs and this verdict."""
    held = []
    for r, payer in zip(reports, payers, strict=True):
        one = runs_.Run(c.Allocation(JOB, r.attempt, r.provider_id, [0], 1_000_000), payer)
        one.executed = c.ExecuteResult(r.exit_code, r.timed_out, 1000, 1000, "")
        one.uploaded = c.UploadResult(r.manifest, r.missing, r.refused)
        held.append(one)
    pay = runs_.settlement(JOB, held, verdict).payments
    return pay, {o.provider_id: o.outcome for o in runs_.outcomes(JOB, held, verdict)}


def test_two_runs_the_quota_refused_do_not_outvote_the_run_that_delivered(
    tmp_path: Path,
) -> None:
    """Row 34e: the job's run delivers; the network's check and tie-break are refused theirs
    (the job's output takes more than half the quota). They abstain: the run that delivered
    stands alone, as one whose check could not be placed; paid, a `success`, its outputs the
    job's. The abstaining runs are neither paid nor recorded (no `outvoted`)."""
    store = FilesystemStore(tmp_path)
    job = spec(reproducible=True)
    first, check, tie = run(store, 1, b"answer"), refused_run(store, 2), refused_run(store, 3)
    refused = {2: {"out.txt"}, 3: {"out.txt"}}

    verdict, _ = judge(store, CLIENT, JOB, job, [first, check], True, refused)
    assert not verdict.decided  # too few runs delivered to compare: the tie-break is run
    verdict, winner = judge(store, CLIENT, JOB, job, [first, check, tie], False, refused)

    assert (verdict.accepted, verdict.succeeded, winner) == (True, True, 1)
    assert (verdict.accepted_attempts, verdict.mismatched_attempts) == ([1], [])
    assert "storage refused the outputs of 2 of 3 runs" in verdict.reason
    pay, outcomes = settled(job, [first, check, tie], verdict, ["client", "network", "network"])
    assert [(p.provider_id, p.payer, p.withheld) for p in pay] == [("p1", "client", False)]
    assert outcomes == {"p1": "success"}


def test_the_run_the_client_filled_the_quota_for_abstains_and_the_job_keeps_the_checks(
    tmp_path: Path,
) -> None:
    """Row 34d: the job's own run is refused (the client filled its quota), the check and
    tie-break deliver once it freed it. The job keeps the check's result, which the client
    pays for; the refused run is neither paid nor charged nor `outvoted`."""
    store = FilesystemStore(tmp_path)
    first, check, tie = refused_run(store, 1), run(store, 2, b"two"), run(store, 3, b"three")
    refused = {1: {"out.txt"}}

    verdict, _ = judge(store, CLIENT, JOB, spec(), [first, check], True, refused)
    assert not verdict.decided
    verdict, winner = judge(store, CLIENT, JOB, spec(), [first, check, tie], False, refused)

    assert (verdict.succeeded, winner, verdict.accepted_attempts) == (True, 2, [2, 3])
    assert verdict.mismatched_attempts == []
    pay, outcomes = settled(spec(), [first, check, tie], verdict,
                            ["client", "network", "network"])
    assert [(p.provider_id, p.payer) for p in pay] == [("p2", "client"), ("p3", "network")]
    assert outcomes == {"p2": "success", "p3": "success"}  # none for p1


def test_a_provider_that_only_says_storage_refused_it_votes_as_an_empty_handed_run(
    tmp_path: Path,
) -> None:
    """A refusal counts only as the storage API recorded it, for that run and output: two
    runs that say (in their reports) that storage refused them, with no record, or with a
    record of another run's, still outvote the run that delivered, as empty-handed runs."""
    store = FilesystemStore(tmp_path)
    job = spec(reproducible=True)
    reports = [run(store, 1, b"answer"), refused_run(store, 2), refused_run(store, 3)]
    for refused in ({}, {1: {"out.txt"}}, {2: {"other.txt"}, 3: set[str]()}):
        verdict, winner = judge(store, CLIENT, JOB, job, reports, False, refused)
        assert (verdict.accepted_attempts, verdict.mismatched_attempts, winner) == (
            [2, 3], [1], 2), refused


def test_a_refused_output_is_never_present(tmp_path: Path) -> None:
    """Compared by presence (a job not declared reproducible), a run whose output storage
    refused never agrees with one that left it, nor with another refused run: it is never
    accepted, whoever delivered, so a provider cannot skip the work and pass for one whose
    upload a nearly full quota refused."""
    store = FilesystemStore(tmp_path)
    delivered, refused_1, refused_2 = run(store, 1, b"x"), refused_run(store, 2), refused_run(
        store, 3)
    refused = {2: {"out.txt"}, 3: {"out.txt"}}
    for reports in ([delivered, refused_1, run(store, 4, b"y")],
                    [refused_1, delivered, refused_2], [refused_1, refused_2]):
        verdict, winner = judge(store, CLIENT, JOB, spec(), reports, False, refused)
        assert {2, 3}.isdisjoint(verdict.accepted_attempts), (reports, verdict)
        assert {2, 3}.isdisjoint(verdict.mismatched_attempts), (reports, verdict)
        assert winner in (1, 4, None)
    nothing, _ = judge(store, CLIENT, JOB, spec(), [refused_1, refused_2], True, refused)
    assert nothing.decided and not nothing.accepted  # the job fails, no one blamed
    assert nothing.reason.startswith("no run delivered its outputs")


def test_replicas_a_client_asked_for_need_two_runs_that_delivered(tmp_path: Path) -> None:
    """Where the client asked for replicas, one run that delivered beside refused ones is no
    majority: the job fails, no one blamed (no one stands alone where the client asked for
    agreement)."""
    store = FilesystemStore(tmp_path)
    reports = [run(store, 1, b"x"), refused_run(store, 2), refused_run(store, 3)]
    refused = {2: {"out.txt"}, 3: {"out.txt"}}
    verdict, winner = judge(store, CLIENT, JOB, spec(replicas=2), reports, False, refused)
    assert (verdict.decided, verdict.accepted, winner) == (True, False, None)
    assert verdict.mismatched_attempts == [] and "no majority" in verdict.reason
