"""The baseline of `python -m bench pipeline`: a plain workflow of no-op activities, and
its workers (`python -m bench pipeline _worker ...`).

The sandbox imports this module anew for every run, so nothing heavy may be imported here
except through.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from temporalio.client import Client
    from temporalio.worker import Worker


NOOP = "bench_noop"
LOCAL = "local"  # a step that ran as a local activity (a marker in the history)
PLAIN_CONTROL_QUEUE = "plain-control"


@dataclass
class PlainInput:
    kinds: list[str]  # "control", "gpu" or "local" per activity, in a real job's order
    gpu_task_queue: str


@activity.defn(name=NOOP)
def noop(step: int) -> int:
    return step


@workflow.defn(name="BenchPlainWorkflow")
class PlainWorkflow:
    @workflow.run
    async def run(self, inp: PlainInput) -> int:
        control = workflow.info().task_queue
        for n, kind in enumerate(inp.kinds):
            if kind == LOCAL:  # as ours: a local activity where the real job ran one
                await workflow.execute_local_activity(
                    NOOP, n, start_to_close_timeout=timedelta(seconds=60)
                )
                continue
            await workflow.execute_activity(
                NOOP, n, task_queue=inp.gpu_task_queue if kind == "gpu" else control,
                start_to_close_timeout=timedelta(seconds=60),
            )
        return len(inp.kinds)


async def serve_worker(address: str, task_queue: str, slots: int, workflows: bool,
                       stop: asyncio.Event) -> None:
    client = await Client.connect(address)
    with ThreadPoolExecutor(max_workers=slots) as executor:
        worker = Worker(
            client, task_queue=task_queue, workflows=[PlainWorkflow] if workflows else [],
            activities=[noop], activity_executor=executor, max_concurrent_activities=slots,
        )
        async with worker:
            await stop.wait()


def worker_main(argv: list[str]) -> int:
    """`python -m bench pipeline _worker ADDRESS QUEUE SLOTS [--workflows]`: a baseline worker."""
    from infra.process import run_service

    address, queue, slots = argv[0], argv[1], int(argv[2])
    run_service(lambda stop: serve_worker(address, queue, slots, "--workflows" in argv, stop))
    return 0  # run_service exits the process itself

