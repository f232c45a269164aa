"""What Temporal's histories say about each run of `python -m bench pipeline`: its
steps, their queue waits and running times, and when it closed.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle

from bench._common import bounded, say
from bench.pipeline_plain import LOCAL
from workflows.contracts import GPU_STEPS

T = TypeVar("T")

LOCAL_ACTIVITY_MARKER = "core_local_activity"



@dataclass
class Step:
    name: str
    queue: str
    scheduled: float
    started: float = 0.0
    closed: float = 0.0


@dataclass
class Run:
    """One workflow run as its history tells it: activities and workflow tasks, in seconds."""

    started: float
    closed: float
    steps: list[Step] = field(default_factory=list)
    tasks: list[tuple[float, float, float]] = field(default_factory=list)  # sched, start, done
    events: Counter[str] = field(default_factory=Counter)  # history events by type
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def kinds(self) -> list[str]:
        return ["gpu" if s.name in GPU_STEPS else LOCAL if s.queue == LOCAL else "control"
                for s in self.steps]

    @property
    def gpu_queue(self) -> str:
        # GPU steps are assignments on the control queue; the baseline gives each a queue.
        return next((s.queue for s in self.steps if s.name in GPU_STEPS), "")


def _seconds(event: HistoryEvent) -> float:
    return float(event.event_time.ToMicroseconds()) / 1e6


def parse_history(events: list[HistoryEvent]) -> Run:
    run = Run(_seconds(events[0]), _seconds(events[-1]))
    by_id: dict[int, Step] = {}
    task: list[float] = []
    for e in events:
        t = _seconds(e)
        run.events[EventType.Name(e.event_type).removeprefix("EVENT_TYPE_")] += 1
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            a = e.activity_task_scheduled_event_attributes
            by_id[e.event_id] = Step(a.activity_type.name, a.task_queue.name, t)
            run.steps.append(by_id[e.event_id])
        elif (e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
              and e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER):
            # A local activity: run inside a workflow task, so no queue wait of its own.
            data = e.marker_recorded_event_attributes.details["data"].payloads[0].data
            run.steps.append(Step(json.loads(data)["activity_type"], LOCAL, t, t, t))
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            by_id[e.activity_task_started_event_attributes.scheduled_event_id].started = t
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            by_id[e.activity_task_completed_event_attributes.scheduled_event_id].closed = t
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            task = [t]
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED and task:
            task.append(t)
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and len(task) == 2:
            run.tasks.append((task[0], task[1], t))
            task = []
    return run


async def finished_runs(temporal: Client, workflow_ids: list[str], timeout_s: float,
                        check: Callable[[], None]) -> list[Run]:
    """Wait for every workflow to close (`check` raises when a process they need died),
    then read each one's history."""

    async def result(wid: str) -> Any:
        return await temporal.get_workflow_handle(wid).result()

    everything = asyncio.ensure_future(asyncio.gather(*(result(w) for w in workflow_ids)))
    deadline = time.monotonic() + timeout_s
    try:
        while not everything.done():
            await asyncio.wait([everything], timeout=1.0)
            check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(workflow_ids)} workflows did not finish in "
                                   f"{timeout_s:.0f} s")
    finally:
        everything.cancel()
    results = everything.result()

    async def history(wid: str) -> Run:
        handle: WorkflowHandle[Any, Any] = temporal.get_workflow_handle(wid)
        return parse_history(list((await handle.fetch_history()).events))

    runs: list[Run] = await bounded(workflow_ids, 8, history)
    for run, res in zip(runs, results, strict=True):
        run.result = res if isinstance(res, dict) else {"value": res}
    return runs


def breakdown(what: str, runs: list[Run]) -> None:
    """Where a run's time goes, per activity: waiting in its queue, then running."""
    waits: dict[tuple[str, str], list[float]] = defaultdict(list)
    runs_ms: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in runs:
        for s in r.steps:
            key = (s.name, "gpu" if s.name in GPU_STEPS else s.queue)
            waits[key].append((s.started - s.scheduled) * 1000)
            runs_ms[key].append((s.closed - s.started) * 1000)
    say(f"  {what}: mean ms per activity (queue wait / running), over {len(runs)} runs")
    for key, w in waits.items():
        say(f"    {key[0]:<18} {key[1]:<14} {statistics.mean(w):8.1f} / "
            f"{statistics.mean(runs_ms[key]):8.1f}")
    total = statistics.mean(r.closed - r.started for r in runs) * 1000
    act_wait = statistics.mean(sum(s.started - s.scheduled for s in r.steps) for r in runs) * 1000
    act_run = statistics.mean(sum(s.closed - s.started for s in r.steps) for r in runs) * 1000
    wft_wait = statistics.mean(sum(t[1] - t[0] for t in r.tasks) for r in runs) * 1000
    wft_run = statistics.mean(sum(t[2] - t[1] for t in r.tasks) for r in runs) * 1000
    tasks = statistics.mean(len(r.tasks) for r in runs)
    say(f"    per run: {total:.0f} ms open; activities {act_wait:.0f} waiting + {act_run:.0f} "
        f"running; {tasks:.0f} workflow tasks {wft_wait:.0f} waiting + {wft_run:.0f} running")
    events: Counter[str] = sum((r.events for r in runs), Counter())
    say(f"    history events per run: {events.total() / len(runs):.1f}; of which "
        + ", ".join(f"{name.lower()} {n / len(runs):.1f}" for name, n in events.most_common()
                    if not name.startswith(("ACTIVITY_TASK", "WORKFLOW_TASK"))))




def jobs_per_s(first: float, runs: list[Run]) -> float:
    return len(runs) / (max(r.closed for r in runs) - first)

