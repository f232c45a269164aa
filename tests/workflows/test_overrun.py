"""A GPU step that ran past its start-to-close limit while its provider kept heartbeating is
no lost provider (workflows/steps.py is_provider_loss, overran): an upload of outputs too
large to move in the step's time fails the job, refunded, with no provider blamed and no
other provider tied up as long again (docs/security.md row 23b)."""

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


async def test_an_upload_past_its_limit_while_heartbeating_blames_no_provider(
    start: Start, short_transfers: None
) -> None:
    net = StubNetwork(slow_at={"p1": c.UPLOAD_OUTPUTS})
    result = await (await start(net, **FAST)).result()
    assert result.state == "FAILED"
    assert "could not be uploaded within the upload step's 1 s" in result.reason
    assert not net.called(c.MARK_PROVIDER_LOST)
    # Its GPUs go back, as a run that failed; no one is blamed for it.
    (failed,) = net.called(c.RECORD_RUN_FAILED)
    assert (failed.provider_id, failed.attempt) == ("p1", 1)
    assert not [r for r in net.called(c.RECORD_REPUTATION) if r.outcome in ("lost", "failure")]
    # Not tried on another provider: the next would move the same outputs.
    assert [a.attempt for a in net.called(c.ALLOCATE_GPUS)] == [1]
    (settle,) = net.called(c.SETTLE_JOB)
    assert not settle.pay_provider and not settle.payments


async def test_a_silent_upload_is_still_a_lost_provider(start: Start) -> None:
    net = StubNetwork(silent_at={"p1": c.UPLOAD_OUTPUTS})
    result = await (await start(net, **FAST)).result()
    assert (result.state, result.provider_id) == ("SUCCEEDED", "p2"), result.reason
    assert [lost.provider_id for lost in net.called(c.MARK_PROVIDER_LOST)] == ["p1"]
