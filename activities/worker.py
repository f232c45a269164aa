"""`python -m activities.worker`: the control worker, JobWorkflow and CanaryWorkflow with
the control activities, the assignment watch and the sweeper, on the control task queue."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.assign import AssignActivities, watch_assignments
from activities.canary import CanaryActivities
from activities.control import CONTROL_SLOTS, ControlActivities
from activities.sweeper import Sweeper
from domain.application import Network
from infra import tracing
from infra.assignments import AssignmentBoard
from infra.process import run_service
from infra.row_cipher import RowCipher
from infra.settings import Settings
from infra.temporal import connect
from readmodel.schema import ViewDB
from workflows.canary import CanaryWorkflow
from workflows.job import JobWorkflow

# How long a workflow task waits on this worker's own (sticky) queue before any control
# worker may take it from the shared one. Temporal's default, 10 s, stalled every job in
# flight that long when a control worker died (tests/reliability/test_kill_restart.py:
# GpusAllocated to InputsStaged took 10.3 s after the kill), and a job on a loaded one.
STICKY_S = 3.0

log = logging.getLogger(__name__)


def workflow_runner() -> SandboxedWorkflowRunner:
    """The sandbox, with our workflows' own modules (workflows/: deterministic, no I/O)
    passed through. The sandbox otherwise imports a workflow's module again for each run
    it starts (JobWorkflow's class body and its definition's checks, every job); the
    modules that module imports were passed through already. Tracing adds opentelemetry
    (infra/tracing.py)."""
    options = tracing.worker_options()
    runner = options.get("workflow_runner")
    base = runner.restrictions if isinstance(runner, SandboxedWorkflowRunner) else (
        SandboxRestrictions.default)
    return SandboxedWorkflowRunner(restrictions=base.with_passthrough_modules("workflows"))


def build_control_activities(settings: Settings) -> ControlActivities:
    network = Network(env=settings.eventsourcing_env())
    return ControlActivities(
        network, ViewDB(settings), settings.object_store(), settings
    )


async def run_control_worker(settings: Settings, stop: asyncio.Event) -> None:
    client = await connect(settings)
    activities = build_control_activities(settings)
    board = AssignmentBoard(activities.views, RowCipher(settings.payload_keys))
    # A slot and a thread for every job waiting in allocate_gpus, and BUSY_SLOTS for the rest.
    with ThreadPoolExecutor(max_workers=CONTROL_SLOTS) as executor:
        worker = Worker(
            client,
            task_queue=settings.control_task_queue,
            workflows=[JobWorkflow, CanaryWorkflow],
            activities=activities.all() + CanaryActivities(
                activities.network, activities.views, activities.store, settings
            ).all() + AssignActivities(board, activities.callers).all(),
            activity_executor=executor,
            max_concurrent_activities=CONTROL_SLOTS,
            workflow_runner=workflow_runner(),
            sticky_queue_schedule_to_start_timeout=timedelta(seconds=STICKY_S),
        )
        sweeper = Sweeper(activities.network, activities.views, client,
                          settings.protocol_fee_bps, settings.sweep_interval_s)
        async with worker:
            log.info("control worker serving task queue %r", settings.control_task_queue)
            sweeping = asyncio.create_task(sweeper.run(stop))
            watch = asyncio.create_task(watch_assignments(client, board, stop))
            await stop.wait()
            await sweeping
            await watch


def main() -> None:
    settings = Settings()
    settings.check_keys()
    tracing.setup(settings.tracing, "control-worker")

    async def serve(stop: asyncio.Event) -> None:
        await run_control_worker(settings, stop)

    run_service(serve)


if __name__ == "__main__":
    main()
