"""`gpgpu job submit --wait`: follow a job's events, with a live view of its pipeline.

The event stream is read on a helper thread so that the main thread can keep the
display moving and poll the queue position (events don't carry its changes).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time

from rich.console import Console
from rich.live import Live

from client.errors import GpgpuError
from client.models import Job, JobEvent
from client.pipeline import Pipeline, StepState
from client.sdk import GpgpuClient
from client.views import pipeline_view

QUEUE_POLL_S = 2.0

_Item = JobEvent | BaseException | None


def _pump(gp: GpgpuClient, job_id: str, after: int, out: queue.Queue[_Item]) -> None:
    try:
        for event in gp.follow(job_id, after=after):
            out.put(event)
        out.put(None)
    except BaseException as err:  # handed to the main thread, which raises it
        out.put(err)


def follow_job(gp: GpgpuClient, job: Job, console: Console | None) -> tuple[Job, Pipeline]:
    """Follow `job` to its terminal event; render live on `console` if given."""
    pipeline = Pipeline()
    events: queue.Queue[_Item] = queue.Queue()
    threading.Thread(
        target=_pump, args=(gp, job.id, 0, events), name=f"follow-{job.id}", daemon=True
    ).start()
    live = Live(pipeline_view(job, pipeline), console=console, refresh_per_second=8)
    next_poll = time.monotonic() + QUEUE_POLL_S
    if console is not None:
        live.start()
    try:
        while True:
            try:
                item = events.get(timeout=0.25)
            except queue.Empty:
                if pipeline.state("allocate") == StepState.ACTIVE and (
                    time.monotonic() >= next_poll
                ):
                    next_poll = time.monotonic() + QUEUE_POLL_S
                    # The display can do without it; the event stream decides the outcome.
                    with contextlib.suppress(GpgpuError):
                        pipeline.set_queue_position(gp.job(job.id).queue_position)
                    live.update(pipeline_view(job, pipeline))
                continue
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            pipeline.apply(item)
            live.update(pipeline_view(job, pipeline))
    finally:
        if console is not None:
            live.stop()
    return gp.job(job.id), pipeline
