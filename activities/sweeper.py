"""The control worker's sweeper: a job whose workflow closed without ending it is ended.

An operator's `temporal workflow terminate` (or a workflow that failed, timed out or was
cancelled without running its own ending) stops a job's workflow between two steps: the
job would stay RUNNING or VERIFYING in the read model for ever, its escrow held and its
GPUs reserved. Every `interval_s` the sweeper lists the jobs the read model thinks are
active, asks Temporal about each one's workflow, and ends, through the domain, each job
whose workflow has closed while the domain still has it active: the whole escrow back to
the client (no result of it was verified), its GPUs released, the job FAILED with a reason
that says what happened. The domain, not the read model, decides (the read model lags).
Idempotent: several control workers may sweep at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from domain.application import Network
from domain.states import TERMINAL_STATES
from readmodel.schema import ViewDB
from workflows.contracts import job_workflow_id

log = logging.getLogger(__name__)

CLOSED = {
    WorkflowExecutionStatus.TERMINATED: "terminated by an operator",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.TIMED_OUT: "timed out",
    WorkflowExecutionStatus.CANCELED: "cancelled before it could end the job",
}
ACTIVE_LIMIT = 5000  # jobs looked at per sweep (the oldest first)


class Sweeper:
    def __init__(self, network: Network, views: ViewDB, temporal: Client, fee_bps: int,
                 interval_s: float = 30.0):
        self.network, self.views, self.temporal = network, views, temporal
        self.fee_bps, self.interval_s = fee_bps, interval_s

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep()
            except Exception:  # the next sweep tries again
                log.exception("sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    async def sweep(self) -> list[str]:
        """End every job whose workflow has closed without ending it; returns their ids."""
        marks = ", ".join("?" for _ in TERMINAL_STATES)
        rows = await asyncio.to_thread(
            self.views.query,
            f"SELECT job_id FROM jobs WHERE state NOT IN ({marks}) ORDER BY updated_at"
            f" LIMIT {ACTIVE_LIMIT}",
            TERMINAL_STATES,
        )
        ended = []
        for row in rows:
            job_id = row["job_id"]
            try:
                described = await self.temporal.get_workflow_handle(
                    job_workflow_id(job_id)
                ).describe()
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    continue  # a canary's job, or a workflow not started (the API ends those)
                raise
            why = CLOSED.get(described.status) if described.status else None
            if why is None:
                continue
            reason = f"the job's workflow was {why}"
            if await asyncio.to_thread(self.network.end_abandoned, job_id, reason,
                                       self.fee_bps):
                log.warning("job %s: %s; ended it, escrow refunded", job_id, reason)
                ended.append(job_id)
        return ended
