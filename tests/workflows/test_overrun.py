"""A GPU step that ran past its start-to-close limit while its provider kept heartbeating is
no lost provider (workflows/steps.py is_provider_loss, overran), nor a blameless ending: it
is the provider's own failure, the run goes elsewhere and the provider is blamed once
another got through (a provider that heartbeats and never finishes must not fail a
client's job for nothing). A job whose outputs no provider can move in time blames none.
docs/security.md row 23b."""

from __future__ import annotations

import pytest

import workflows.job
import workflows.steps
from tests.workflows.stub_network import Start, StubNetwork
from workflows import contracts as c

# The step's limit is TRANSFER_S + pickup + grace; in real time here (the test server does
# not skip time while an activity runs), so a short one.
FAST = {"gpu_heartbeat_timeout_s": 2.0, "gpu_outage_grace_s": 0.0,
        "gpu_schedule_to_start_timeout_s": 1.0}


@pytest.fixture
def short_transfers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workflows.steps, "TRANSFER_S", 1.0)
    monkeypatch.setattr(workflows.job, "TRANSFER_S", 1.0)


async def test_an_upload_past_its_limit_while_heartbeating_is_the_providers_failure(
    start: Start, short_transfers: None
) -> None:
    net = StubNetwork(slow_at={"p1": c.UPLOAD_OUTPUTS})
    result = await (await start(net, **FAST)).result()
    assert (result.state, result.provider_id) == ("SUCCEEDED", "p2"), result.reason
    assert not net.called(c.MARK_PROVIDER_LOST)  # it was answering: no loss
    (failed,) = net.called(c.RECORD_RUN_FAILED)  # its GPUs go back, the run goes on
    assert (failed.provider_id, failed.attempt) == ("p1", 1)
    assert "did not finish its upload_outputs step within its time limit" in failed.reason
    outcomes = [(r.provider_id, r.outcome) for r in net.called(c.RECORD_REPUTATION)]
    assert ("p1", "failure") in outcomes and ("p1", "lost") not in outcomes, outcomes


async def test_an_upload_no_provider_finishes_in_time_blames_none(
    start: Start, short_transfers: None
) -> None:
    net = StubNetwork(slow_at={"p1": c.UPLOAD_OUTPUTS, "p2": c.UPLOAD_OUTPUTS})
    result = await (await start(net, max_provider_attempts=2, **FAST)).result()
    assert result.state == "FAILED", result.reason
    assert not net.called(c.MARK_PROVIDER_LOST)
    assert not [r for r in net.called(c.RECORD_REPUTATION) if r.outcome in ("lost", "failure")]
    (settle,) = net.called(c.SETTLE_JOB)
    assert not settle.pay_provider and not settle.payments


async def test_a_silent_upload_is_still_a_lost_provider(start: Start) -> None:
    net = StubNetwork(silent_at={"p1": c.UPLOAD_OUTPUTS})
    result = await (await start(net, **FAST)).result()
    assert (result.state, result.provider_id) == ("SUCCEEDED", "p2"), result.reason
    assert [lost.provider_id for lost in net.called(c.MARK_PROVIDER_LOST)] == ["p1"]
