"""A workflow of an outsider who reached Temporal: it schedules the network's control steps
by name on the network's own control queue."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy


@dataclass
class Forgery:
    control_queue: str
    activity: str
    arg: dict[str, Any]


@workflow.defn(name="JobWorkflow")  # even named as ours
class OutsideWorkflow:
    def __init__(self) -> None:
        self._scheduled = 0

    @workflow.run
    async def run(self, forgery: Forgery) -> str:
        # An activity id of its own, as the network's workflows give each step: with the
        # network's key, the codec seals a step's payloads for its id (none, none sealed).
        self._scheduled += 1
        try:
            await workflow.execute_activity(
                forgery.activity, forgery.arg, task_queue=forgery.control_queue,
                start_to_close_timeout=timedelta(seconds=20),
                retry_policy=RetryPolicy(maximum_attempts=1),
                activity_id=f"{forgery.activity}:{self._scheduled}",
            )
        except Exception as err:
            # The types down the failure's chain (the messages are encrypted by the network:
            # without its key they read "Encoded failure").
            types, cause = [], getattr(err, "cause", None)
            while cause is not None:
                types.append(getattr(cause, "type", None) or type(cause).__name__)
                cause = getattr(cause, "cause", None)
            return f"refused: {' <- '.join(types)}: {getattr(err, 'cause', None) or err}"
        return "ran"


@workflow.defn(name="OutsideSweep")
class OutsideSweep:
    """Every control step in turn, each with a request of its own type."""

    @workflow.run
    async def run(self, forgeries: list[Forgery]) -> list[str]:
        answers, outside = [], OutsideWorkflow()
        for forgery in forgeries:
            answers.append(f"{forgery.activity}: {await outside.run(forgery)}")
        return answers
