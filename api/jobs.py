"""Submit a job: validate, pin inputs, record, start its workflow; or refuse, recording nothing."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

from api.services import Services
from domain.errors import DomainError
from domain.spec import JobSpec, SpecError, parse_job_spec
from infra.storage import ObjectNotFound, StorageError
from workflows.contracts import JobInput, job_workflow_id
from workflows.job import JobWorkflow


@dataclass
class Submitted:
    job_id: str


async def pin_inputs(services: Services, client_id: str, spec: JobSpec) -> JobSpec:
    """Fix each input's sha256 and size as storage holds them now."""
    errors: list[tuple[str, str]] = []
    pinned = []
    for n, ref in enumerate(spec.inputs):
        try:
            info = await asyncio.to_thread(services.store.stat, client_id, ref.key)
        except ObjectNotFound:
            errors.append((f"inputs.{n}.key", f"no object {ref.key!r} in your storage"))
            continue
        except StorageError as err:
            errors.append((f"inputs.{n}.key", str(err)))
            continue
        if ref.sha256 is not None and ref.sha256 != info.sha256:
            errors.append((f"inputs.{n}.sha256", f"storage holds sha256 {info.sha256}"))
        pinned.append(ref.model_copy(update={"sha256": info.sha256, "size": info.size}))
    if errors:
        raise SpecError(errors)
    return spec.model_copy(update={"inputs": pinned})


async def submit_job(services: Services, client_id: str, data: Any) -> Submitted:
    spec = parse_job_spec(data)
    try:
        await asyncio.to_thread(services.network.check_queue, spec.queue)
    except DomainError as err:
        raise SpecError([("queue", str(err).removeprefix("queue: "))]) from None
    spec = await pin_inputs(services, client_id, spec)
    job_id = str(uuid.uuid4())
    settings = services.settings
    await asyncio.to_thread(
        services.network.open_client, client_id, settings.starting_balance_micro
    )
    await asyncio.to_thread(services.network.submit_job, job_id, client_id, spec)
    job_input = JobInput(
        job_id=job_id,
        client_id=client_id,
        gpu_heartbeat_timeout_s=settings.gpu_activity_heartbeat_timeout_s,
        gpu_schedule_to_start_timeout_s=settings.gpu_schedule_to_start_timeout_s,
        max_provider_attempts=settings.max_provider_attempts,
    )
    try:
        await services.temporal.start_workflow(
            JobWorkflow.run,
            job_input,
            id=job_workflow_id(job_id),
            task_queue=settings.control_task_queue,
        )
    except Exception as err:
        # The job is recorded; say plainly that it never started rather than leave it hanging.
        reason = f"could not start the job's workflow: {err}"
        await asyncio.to_thread(services.network.finish_job, job_id, False, reason)
        raise
    return Submitted(job_id)
