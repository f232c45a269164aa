"""Payment only for verified work: a run that exits 0 with its outputs missing ("empty-handed"),
or whose command exits non-zero ("failed"), is what a provider that skipped the work and an
honest provider of a job that writes nothing, or fails, both report. It is always checked by
an independent run, and paid and rewarded only if that run reproduces it; unchecked, the
client is charged and the provider not paid, and no reputation changes. A timeout is not
(workflows/runs.py `unproven_timeout`). The same against a real network:
tests/adversarial/test_pay_and_blame.py.
"""

from __future__ import annotations

from tests.workflows.stub_network import Start, StubNetwork
from workflows import contracts as c

THREE = ["p1", "p2", "p3"]


def outcomes(net: StubNetwork) -> dict[str, str]:
    return {r.provider_id: r.outcome for r in net.called(c.RECORD_REPUTATION)}


def paid(net: StubNetwork) -> dict[str, tuple[int, str, bool]]:
    (settle,) = net.called(c.SETTLE_JOB)
    assert settle.payments is not None
    return {p.provider_id: (p.gpu_ms, p.payer, p.withheld) for p in settle.payments}


async def test_an_empty_handed_run_is_checked_even_when_no_check_was_drawn(start: Start) -> None:
    """p1 skipped the work (exit 0, nothing uploaded); the network's check (p2) and the
    tie-break (p3) both deliver: p1 is outvoted, unpaid, recorded `outvoted` (back on
    probation, its score unchanged); the client gets p2's result and pays for it, the
    network pays the tie-break."""
    net = StubNetwork(providers=THREE, placeable=set(THREE), run_check=False, empty={"p1"})
    result = await (await start(net)).result()
    assert (result.state, result.provider_id) == ("SUCCEEDED", "p2"), result.reason
    assert [a.provider_id for a in net.called(c.EXECUTE_JOB)] == THREE
    assert paid(net) == {"p2": (1000, "client", False), "p3": (1000, "network", False)}
    assert outcomes(net) == {"p1": "outvoted", "p2": "success", "p3": "success"}


async def test_an_empty_handed_run_the_check_reproduces_is_paid_and_the_job_fails(
    start: Start,
) -> None:
    """The client's job writes nothing: p1 (honest) and the network's check (p2) both end
    exit 0 with the output missing. p1 is paid by the client and not blamed; the job fails
    as the client's."""
    net = StubNetwork(providers=THREE, placeable=set(THREE), empty={"p1", "p2"})
    result = await (await start(net)).result()
    assert result.state == "FAILED" and "declared outputs missing" in result.reason, result
    assert [a.provider_id for a in net.called(c.EXECUTE_JOB)] == ["p1", "p2"]
    assert paid(net) == {"p1": (1000, "client", False), "p2": (1000, "network", False)}
    assert outcomes(net) == {"p1": "success", "p2": "success"}


async def test_an_empty_handed_run_no_one_can_check_is_charged_not_paid_and_blames_no_one(
    start: Start,
) -> None:
    """No independent provider within the check's bound: the client is charged (a job that
    writes nothing gets no free GPU time), the provider is not paid (it may have skipped the
    work), and no reputation changes."""
    net = StubNetwork(providers=["p1", "p2"], placeable={"p1"}, empty={"p1"}, check_wait_s=5)
    result = await (await start(net)).result()
    assert result.state == "FAILED" and "declared outputs missing" in result.reason, result
    (unplaced,) = net.called(c.RECORD_UNPLACED)
    assert unplaced.purpose == "check"
    assert paid(net) == {"p1": (1000, "client", True)}
    assert outcomes(net) == {}
    assert [r.provider_id for r in net.called(c.RELEASE_GPUS)] == ["p1"]


async def test_an_empty_handed_run_whose_check_disagrees_and_no_tie_break_fits_is_not_paid(
    start: Start,
) -> None:
    """p1 empty-handed, the check (p2) delivers, no third owner for the tie-break: the check
    decides nothing (as for any check), p1's run stands alone, unverified: charged, not
    paid, no outcome."""
    net = StubNetwork(providers=THREE, placeable={"p1", "p2"}, empty={"p1"})
    result = await (await start(net)).result()
    assert result.state == "FAILED", result
    assert paid(net) == {"p1": (1000, "client", True)}
    assert outcomes(net) == {}


async def test_a_run_that_delivers_is_not_forced_to_a_check(start: Start) -> None:
    net = StubNetwork(providers=THREE, placeable=set(THREE))
    result = await (await start(net)).result()
    assert (result.state, result.provider_id) == ("SUCCEEDED", "p1"), result.reason
    assert [a.provider_id for a in net.called(c.EXECUTE_JOB)] == ["p1"]
    assert paid(net) == {"p1": (1000, "client", False)}
    assert outcomes(net) == {"p1": "success"}


async def test_a_nondeterministic_job_checked_three_ways_blames_no_one_and_the_client_pays(
    start: Start,
) -> None:
    """The client declared a nondeterministic job reproducible: the network's check and the
    tie-break each give another output. No provider is blamed or rewarded; the client pays
    for its run, the network for its two."""
    net = StubNetwork(providers=THREE, placeable=set(THREE), run_check=True,
                      answers={"p2": "e" * 64, "p3": "d" * 64})
    result = await (await start(net)).result()
    assert result.state == "FAILED" and "no majority" in result.reason, result
    assert paid(net) == {"p1": (1000, "client", False), "p2": (1000, "network", False),
                         "p3": (1000, "network", False)}
    assert outcomes(net) == {}


async def test_a_failed_run_whose_check_succeeds_is_outvoted_and_not_paid(start: Start) -> None:
    """p1 reports a failure without running (exit 1, nothing written); the network's check
    (p2) and the tie-break (p3) both deliver: p1 is outvoted, neither paid nor charged, and
    recorded `outvoted`; the client gets p2's result and pays for it, the network pays the
    tie-break."""
    net = StubNetwork(providers=THREE, placeable=set(THREE), exit_codes={"p1": 1},
                      empty={"p1"})
    result = await (await start(net)).result()
    assert (result.state, result.provider_id) == ("SUCCEEDED", "p2"), result.reason
    assert [a.provider_id for a in net.called(c.EXECUTE_JOB)] == THREE
    assert paid(net) == {"p2": (1000, "client", False), "p3": (1000, "network", False)}
    assert outcomes(net) == {"p1": "outvoted", "p2": "success", "p3": "success"}
    assert result.charged_micro == 1000  # p2's run only


async def test_a_failed_run_the_check_reproduces_is_paid_and_the_job_fails(
    start: Start,
) -> None:
    """The client's job fails: p1 (honest) and the network's check (p2) both exit non-zero,
    with other codes (a failure is one whatever its code). p1 is paid by the client and
    recorded a success; the job fails with p1's ending, the client's."""
    net = StubNetwork(providers=THREE, placeable=set(THREE), exit_codes={"p1": 2, "p2": 1})
    result = await (await start(net)).result()
    assert (result.state, result.reason) == ("FAILED", "the command exited with code 2")
    assert [a.provider_id for a in net.called(c.EXECUTE_JOB)] == ["p1", "p2"]
    assert paid(net) == {"p1": (1000, "client", False), "p2": (1000, "network", False)}
    assert outcomes(net) == {"p1": "success", "p2": "success"}
    assert result.charged_micro == 1000


async def test_a_failed_run_no_one_can_check_is_charged_not_paid_and_blames_no_one(
    start: Start,
) -> None:
    """No independent provider within the check's bound: the client is charged (a failing
    job gets no free GPU time), the provider is not paid (it may not have run it), and no
    reputation changes."""
    net = StubNetwork(providers=["p1", "p2"], placeable={"p1"}, exit_codes={"p1": 1},
                      check_wait_s=5)
    result = await (await start(net)).result()
    assert (result.state, result.reason) == ("FAILED", "the command exited with code 1")
    (unplaced,) = net.called(c.RECORD_UNPLACED)
    assert unplaced.purpose == "check"
    assert paid(net) == {"p1": (1000, "client", True)}
    assert result.charged_micro == 1000
    assert outcomes(net) == {}
    assert [r.provider_id for r in net.called(c.RELEASE_GPUS)] == ["p1"]


async def test_a_failed_run_whose_check_succeeds_and_no_tie_break_fits_is_not_paid(
    start: Start,
) -> None:
    """p1 fails, the check (p2) delivers, no third owner for the tie-break: the check
    decides nothing, p1's run stands alone, unreproduced: charged, not paid, no outcome."""
    net = StubNetwork(providers=THREE, placeable={"p1", "p2"}, exit_codes={"p1": 1})
    result = await (await start(net)).result()
    assert (result.state, result.reason) == ("FAILED", "the command exited with code 1")
    assert [a.provider_id for a in net.called(c.EXECUTE_JOB)] == ["p1", "p2"]
    assert paid(net) == {"p1": (1000, "client", True)}
    assert outcomes(net) == {}


async def test_a_timeout_is_not_forced_to_a_check(start: Start) -> None:
    """A timed-out run that nothing checked is not paid anyway (row 7a): a
    check would cost the network a whole timeout of GPU time and change nothing of that."""
    net = StubNetwork(providers=THREE, placeable=set(THREE), timeouts={"p1"})
    result = await (await start(net)).result()
    assert result.state == "FAILED" and "timed out" in result.reason, result
    assert [a.provider_id for a in net.called(c.EXECUTE_JOB)] == ["p1"]
    assert paid(net) == {"p1": (60_000, "client", True)}
    assert outcomes(net) == {"p1": "timeout"}


async def test_a_timeout_that_uploads_an_output_nothing_checked_is_not_paid(
    start: Start,
) -> None:
    """p1 reports a timeout and uploads an output: one it can make up as easily as write, and
    a timed-out job fails whatever it left, so nothing compares it. Charged, not paid, a
    `timeout`, as a timeout with nothing (row 7a): a provider cannot buy its chosen window
    with a made-up file."""
    net = StubNetwork(providers=THREE, placeable=set(THREE), timeouts_writing={"p1"})
    result = await (await start(net)).result()
    assert result.state == "FAILED" and "timed out" in result.reason, result
    assert [a.provider_id for a in net.called(c.EXECUTE_JOB)] == ["p1"]
    assert paid(net) == {"p1": (60_000, "client", True)}
    assert outcomes(net) == {"p1": "timeout"}
