"""What a job waits for, in words: while QUEUED, from its queue's line and the market
(waiting_reasons); while VERIFYING, from its workflow's pending steps (verifying_reasons).

A job verifies between runs: its first run finished, and the network's check, a
tie-break between replicas that disagree, or the client's verifier may need another run
on GPUs of another owner. The read model cannot tell those waits from a verification of a
second; the workflow can: its pending activity (allocate_gpus, with the scheduler's reason
as its heartbeat) or the step it is on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from temporalio.converter import ActivitySerializationContext
from temporalio.service import RPCError

from api.services import Services
from domain.errors import DomainError
from protocol.spec import JobSpec
from readmodel.queue import QueueLine
from readmodel.telemetry import online_provider_ids
from workflows import contracts as c

log = logging.getLogger(__name__)

DESCRIBE_S = 3.0  # a job page polls: a control plane that is slow to answer is said so
_STEPS = {
    c.VERIFY_JOB: "checking its outputs against storage and any other run's",
    c.SETTLE_JOB: "paying its providers and returning the rest of what was held",
    c.CLOSE_JOB: "paying its providers and returning the rest of what was held",
}
ANOTHER_RUN = ("another run of this job (the network's check, a tie-break between runs that "
               "disagree, or your verifier) waits for GPUs, on a provider of another owner "
               "than its earlier runs")


async def waiting_reasons(
    services: Services, job_id: str, queue: str, line: QueueLine
) -> list[str]:
    """Why a queued job has not started, from what the scheduler weighs: the per-client cap
    (domain.scheduling.plan), where it could run (the network's explain, every reason per
    provider) and its place in the queue's fair order."""
    row = next((r for r in line.rows if r["job_id"] == job_id), None)
    if row is None:
        return []
    reasons: list[str] = []
    cap, held = line.max_gpus_per_client, line.held.get(row["client_id"], 0)
    if cap and held + row["gpus"] > cap:
        reasons.append(f"the queue lets a client hold at most {cap} GPUs at once; the "
                       f"client's jobs hold {held} and this one needs {row['gpus']}: it starts "
                       "when one ends")
    try:
        spec = JobSpec.recorded(json.loads(row["spec"]))
        online = await asyncio.to_thread(online_provider_ids, services.views, services.settings)
        judged = await asyncio.to_thread(services.network.explain, spec, online)
        never = None  # an eligible provider could run it, so one could ever
        if not any(a.eligible for a in judged):
            never = await asyncio.to_thread(services.network.unsatisfiable, spec)
    except (ValueError, DomainError) as err:
        return [*reasons, f"its spec cannot be matched now: {err}"]
    if never is not None:  # what the providers are, not what they are doing: say that
        reasons.append(never)
    elif not any(a.eligible for a in judged):
        reasons.append("no provider can take it now: " + "; ".join(
            f"{a.provider_id}: {a.reason}" for a in judged))
    ahead = line.positions.get(job_id, 1) - 1
    if ahead:
        reasons.append(f"{ahead} job{'s' if ahead > 1 else ''} ahead of it in the queue")
    if not reasons:
        reasons.append("a GPU fits it and is free: the scheduler places it within seconds")
    return reasons


async def verifying_reasons(temporal: Any, job_id: str) -> list[str]:
    """Why a VERIFYING job has not finished yet; never raises."""
    try:
        handle = temporal.get_workflow_handle(c.job_workflow_id(job_id))
        described = await asyncio.wait_for(handle.describe(), DESCRIBE_S)
        pending = list(described.raw_description.pending_activities)
    except (RPCError, TimeoutError) as err:
        log.info("job %s: no pending steps from the control plane: %s", job_id, err)
        return ["checking its results; what it waits for could not be read from the "
                "control plane just now"]
    reasons = []
    for activity in pending:
        name = activity.activity_type.name
        if name == c.ALLOCATE_GPUS:
            why = await _last_heartbeat(temporal, handle.id, activity)
            reasons.append(f"{ANOTHER_RUN}: {why}" if why else ANOTHER_RUN)
        elif name in _STEPS:
            reasons.append(_STEPS[name])
    return reasons or ["checking its results: it ends within seconds"]


async def _last_heartbeat(temporal: Any, workflow_id: str, activity: Any) -> str:
    payloads = activity.heartbeat_details.payloads
    if not payloads:
        return ""
    # Sealed for the job's workflow and that step (infra/payload_codec.py): opened there alone.
    converter = temporal.data_converter.with_context(ActivitySerializationContext(
        namespace=temporal.namespace, workflow_id=workflow_id, workflow_type=None,
        activity_id=activity.activity_id, activity_type=activity.activity_type.name,
        activity_task_queue=None, is_local=False))
    try:
        details = await converter.decode(payloads)
    except Exception as err:  # a payload this API cannot read: the wait is still said
        log.info("allocate heartbeat not readable: %s", err)
        return ""
    last = details[-1] if details else ""
    return str(last)[:500] if isinstance(last, str) else ""
