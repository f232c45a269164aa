"""A VERIFYING job's wait is read from its pending allocation's last heartbeat, which the
scheduler wrote sealed for that step (infra/payload_codec.py): the API opens it for that step
alone."""

from __future__ import annotations

from types import SimpleNamespace

from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.converter import ActivitySerializationContext

from api.waiting import _last_heartbeat
from infra.payload_codec import data_converter
from tests.support.temporal import TEST_PAYLOAD_KEYS
from workflows import contracts as c

STEP = f"{c.ALLOCATE_GPUS}:2:14"


async def pending(written_for: str) -> PendingActivityInfo:
    """The pending allocation as `describe` shows it, its heartbeat sealed for `written_for`."""
    converter = data_converter(TEST_PAYLOAD_KEYS).with_context(ActivitySerializationContext(
        namespace="default", workflow_id="job-j1", workflow_type="JobWorkflow",
        activity_id=written_for, activity_type=c.ALLOCATE_GPUS, activity_task_queue="control",
        is_local=False))
    info = PendingActivityInfo(activity_id=STEP)
    info.activity_type.name = c.ALLOCATE_GPUS
    info.heartbeat_details.payloads.extend(await converter.encode(["p1: busy"]))
    return info


async def test_the_allocations_heartbeat_is_read_for_its_own_step() -> None:
    temporal = SimpleNamespace(data_converter=data_converter(TEST_PAYLOAD_KEYS),
                               namespace="default")
    assert await _last_heartbeat(temporal, "job-j1", await pending(STEP)) == "p1: busy"
    # One sealed for another step of the job (or another job) is not read: no reason given.
    assert await _last_heartbeat(temporal, "job-j1", await pending(f"{c.ALLOCATE_GPUS}:1:3")) == ""
    assert await _last_heartbeat(temporal, "job-j2", await pending(STEP)) == ""
