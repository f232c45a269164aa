"""The client's verifier command: run over the accepted outputs on another provider, paid
like a run, and its exit code decides the job. The same against a real network:
tests/e2e/test_verification.py."""

from __future__ import annotations

from tests.workflows.stub_network import VERIFIER, Start, StubNetwork
from workflows import contracts as c


async def test_a_verifier_that_passes_runs_on_another_provider_and_is_paid(
    start: Start,
) -> None:
    net = StubNetwork(verifier=VERIFIER)
    result = await (await start(net)).result()
    assert (result.state, result.provider_id) == ("SUCCEEDED", "p1"), result.reason
    run, check = net.called(c.EXECUTE_JOB)
    assert (run.provider_id, run.command) == ("p1", ["true"])
    assert (check.provider_id, check.attempt, check.command) == ("p2", 2, VERIFIER)
    plan = net.called(c.PREPARE_TRANSFERS)[-1]
    assert (plan.purpose, plan.source_attempt) == ("verify", 1)  # over the accepted outputs
    assert net.called(c.ALLOCATE_GPUS)[-1].excluded_provider_ids == ["p1"]
    assert [u.provider_id for u in net.called(c.UPLOAD_OUTPUTS)] == ["p1"]  # it uploads none
    (settle,) = net.called(c.SETTLE_JOB)
    assert [(p.provider_id, p.gpu_ms) for p in settle.payments or []] == [
        ("p1", 1000), ("p2", 500)]
    # Each provider that ran did its part: one success each, keyed by its attempt.
    assert [(r.job_id, r.provider_id, r.outcome) for r in net.called(c.RECORD_REPUTATION)] == [
        (f"{result.job_id}#1", "p1", "success"), (f"{result.job_id}#2", "p2", "success")]
    assert sorted(r.provider_id for r in net.called(c.RELEASE_RUN)) == ["p1", "p2"]
    assert sorted(r.provider_id for r in net.called(c.RELEASE_GPUS)) == ["p1", "p2"]


async def test_a_verifier_that_rejects_fails_the_job_and_both_runs_are_paid(
    start: Start,
) -> None:
    net = StubNetwork(verifier=VERIFIER, verifier_exit=2)
    result = await (await start(net)).result()
    assert result.state == "FAILED"
    assert result.reason == "the verifier rejected the outputs (exited 2): rejected"
    (settle,) = net.called(c.SETTLE_JOB)
    # The run did what it was given (the client's own check failed it): it is paid.
    assert sorted(p.provider_id for p in settle.payments or []) == ["p1", "p2"]
    assert [f.succeeded for f in net.called(c.FINISH_JOB)] == [False]


async def test_a_verifier_that_finds_no_provider_fails_the_job_and_the_run_is_paid(
    start: Start,
) -> None:
    net = StubNetwork(verifier=VERIFIER, placeable={"p1"})
    result = await (await start(net)).result()
    assert result.state == "FAILED"
    assert result.reason == ("the verifier could not run: the verifier found no independent "
                             "provider within 120 s")
    assert [(u.purpose, u.attempt) for u in net.called(c.RECORD_UNPLACED)] == [("verifier", 2)]
    (settle,) = net.called(c.SETTLE_JOB)
    assert [p.provider_id for p in settle.payments or []] == ["p1"]


async def test_a_verifier_whose_provider_is_lost_runs_on_another(start: Start) -> None:
    net = StubNetwork(providers=["p1", "p2", "p3"], placeable={"p1", "p2", "p3"},
                      verifier=VERIFIER, unpicked_at={"p2": c.STAGE_INPUTS})
    result = await (await start(net)).result()
    assert result.state == "SUCCEEDED", result.reason
    assert [lost.provider_id for lost in net.called(c.MARK_PROVIDER_LOST)] == ["p2"]
    assert [e.provider_id for e in net.called(c.EXECUTE_JOB)] == ["p1", "p3"]


async def test_no_verifier_runs_when_the_job_failed(start: Start) -> None:
    net = StubNetwork(verifier=VERIFIER, exit_codes={"p1": 1, "p2": 1})
    result = await (await start(net)).result()
    assert (result.state, result.reason) == ("FAILED", "the command exited with code 1")
    # The job's run and the network's check of its failure (p2), no verifier.
    assert [e.command for e in net.called(c.EXECUTE_JOB)] == [["true"], ["true"]]
