"""Jobs: submitting and cancelling one, reading the caller's jobs, and following a job's
events and output live."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator
from typing import Annotated, Any

import strawberry
from strawberry.scalars import JSON

from api import auth, multiplex
from api.context import I
from api.cost import MAX_JOBS_LISTED
from api.errors import FieldError, Refusal, refusable
from api.jobs import submit_job
from api.scalars import BigInt
from api.streams import check_after, live_rows
from api.waiting import verifying_reasons, waiting_reasons
from domain.states import TERMINAL_EVENTS, TERMINAL_STATES
from protocol import digest
from protocol.spec import SpecError
from readmodel.queue import EXPECTED_START, iso_time
from workflows.contracts import job_workflow_id


@strawberry.type
class OutputFile:
    path: str
    key: str
    digest: str = strawberry.field(description='"blake3:<hex>" (outputs from before BLAKE3: '
                                   '"sha256:<hex>"), as storage computed it on upload')
    size: BigInt

    @classmethod
    def from_record(cls, o: dict[str, Any]) -> OutputFile:
        # A view row projected before BLAKE3 holds a bare `sha256`.
        return cls(path=o["path"], key=o["key"], digest=digest.of_record(o), size=o["size"])


@strawberry.type
class JobEvent:
    seq: int
    job_id: str
    type: str
    at: str
    data: JSON

    @strawberry.field(
        description="Whether this event ends the job (JobSucceeded, JobFailed, JobRejected or "
        "JobCancelled): the network's one list of ending events, so clients need not keep "
        "their own; the job's events stop after it"
    )
    def ends(self) -> bool:
        return self.type in TERMINAL_EVENTS

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobEvent:
        return cls(
            seq=row["seq"], job_id=row["job_id"], type=row["type"], at=row["at"],
            data=json.loads(row["data"]),
        )


EVENTS_SQL = "SELECT * FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq"


@strawberry.type(description="A piece of a job's output as its run printed it (api/joblog.py)")
class JobLogChunk:
    seq: int = strawberry.field(description="the order in the job's log; resume after it")
    attempt: int = strawberry.field(description="the run that printed it")
    provider_id: str
    at: str
    text: str = strawberry.field(description="the output, not always whole lines")
    skipped_bytes: BigInt = strawberry.field(
        description="output of this run before this chunk that is not shown: passed over "
        "by its provider or trimmed to keep the log within its bound (0: none)")

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobLogChunk:
        return cls(seq=row["seq"], attempt=row["attempt"], provider_id=row["provider_id"],
                   at=iso_time(float(row["at"])), text=row["text"],
                   skipped_bytes=BigInt(row["skipped"]))


@strawberry.type
class Job:
    id: strawberry.ID
    client_id: str
    name: str
    state: str
    reason: str
    provider_id: str | None
    max_cost_micro: BigInt
    cost_micro: BigInt | None
    submitted_at: str
    updated_at: str
    outputs: list[OutputFile]
    queue: str = strawberry.field(description="<node>/<queue>")
    priority: int

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(
            id=strawberry.ID(row["job_id"]), client_id=row["client_id"], name=row["name"],
            state=row["state"], reason=row["reason"], provider_id=row["provider_id"],
            max_cost_micro=row["max_cost_micro"], cost_micro=row["cost_micro"],
            submitted_at=row["submitted_at"], updated_at=row["updated_at"],
            outputs=[OutputFile.from_record(o) for o in json.loads(row["outputs"])],
            queue=row["queue"], priority=row["priority"],
        )

    @strawberry.field(
        description="Whether the job has ended (SUCCEEDED, FAILED, REJECTED or CANCELLED): "
        "the network's one list of its ending states, so clients need not keep their own"
    )
    def ended(self) -> bool:
        return self.state in TERMINAL_STATES

    @strawberry.field(
        description="1 for the next job the scheduler places (priority, then fair share, "
        "then age); null unless QUEUED"
    )
    async def queue_position(self, info: I) -> int | None:
        if self.state != "QUEUED":
            return None
        return (await info.context.line(self.queue)).positions.get(str(self.id))

    @strawberry.field(description=EXPECTED_START)
    async def expected_start(self, info: I) -> str | None:
        if self.state != "QUEUED":
            return None
        return (await info.context.line(self.queue)).expected_start.get(str(self.id))

    @strawberry.field(
        description="While QUEUED, what it waits for, in words: the queue's per-client cap, "
        "every reason each provider of its node cannot take it now, the jobs ahead of it; "
        "while VERIFYING, the step it is on or the further run (check, tie-break, verifier) "
        "waiting for GPUs and why; empty otherwise"
    )
    async def waiting_for(self, info: I) -> list[str]:
        if self.state == "VERIFYING":
            return await verifying_reasons(info.context.services.temporal, str(self.id))
        if self.state != "QUEUED":
            return []
        line = await info.context.line(self.queue)
        return await waiting_reasons(info.context.services, str(self.id), self.queue, line)

    @strawberry.field
    async def events(self, info: I) -> list[JobEvent]:
        rows = await info.context.services.query(EVENTS_SQL, (str(self.id), 0))
        return [JobEvent.from_row(r) for r in rows]


@strawberry.type
class JobSubmitted:
    job: Job
    warnings: list[str] = strawberry.field(
        default_factory=list,
        description="What the network saw at submit that the client should know, e.g. that no "
        "provider registered could ever run the spec (too many GPUs, memory, a model or a "
        "region none has): the job is queued all the same and runs if one joins")


@strawberry.type
class SpecRejected:
    errors: list[FieldError]


SubmitJobResult = Annotated[JobSubmitted | SpecRejected, strawberry.union("SubmitJobResult")]
CancelJobResult = Annotated[Job | FieldError, strawberry.union(
    "CancelJobResult", description="The job, its cancelling under way, or why it was refused "
    "(it already ended)")]


async def load_job(info: I, job_id: str) -> Job | None:
    """The job if the caller may see it (auth.can_read_job), else None: no hint it exists."""
    rows = await info.context.services.query("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
    if not rows or not auth.can_read_job(
        info.context.caller, rows[0]["client_id"], rows[0]["provider_id"]
    ):
        return None
    return Job.from_row(rows[0])


@strawberry.type
class JobQuery:
    @strawberry.field(
        description="One job: yours, or one assigned to your provider; null otherwise",
        permission_classes=[auth.SignedIn],
    )
    async def job(self, info: I, id: strawberry.ID) -> Job | None:
        return await load_job(info, str(id))

    @strawberry.field(description="The caller's jobs, newest first",
                      permission_classes=[auth.ClientRole])
    async def jobs(self, info: I, limit: int = 50) -> list[Job]:
        limit = max(1, min(limit, MAX_JOBS_LISTED))
        rows = await info.context.services.query(
            "SELECT * FROM jobs WHERE client_id = ? ORDER BY submitted_at DESC LIMIT ?",
            (info.context.client_id, limit),
        )
        return [Job.from_row(r) for r in rows]


@strawberry.type
class JobMutation:
    @strawberry.mutation(description="Validate a job spec, pin its inputs and start the job",
                         permission_classes=[auth.ClientRole])
    async def submit_job(self, info: I, spec: JSON) -> SubmitJobResult:
        try:
            submitted = await submit_job(info.context.services, info.context.client_id, spec)
        except SpecError as err:
            return SpecRejected(errors=[FieldError(field=f, message=m) for f, m in err.errors])
        services = info.context.services
        # Wait (briefly) for the read model to show the job, so a follow-up query finds it.
        deadline = time.monotonic() + 5
        while (job := await load_job(info, submitted.job_id)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the job was recorded but the read model is not keeping up")
            await asyncio.wait({services.broadcaster.current()}, timeout=0.2)
        return JobSubmitted(job=job, warnings=submitted.warnings)

    @strawberry.mutation(
        description="Stop a job: its process stops within seconds; it pays for GPU time used",
        permission_classes=[auth.ClientRole],
    )
    @refusable
    async def cancel_job(self, info: I, id: strawberry.ID) -> CancelJobResult:
        job = await load_job(info, str(id))
        if job is None or not auth.can_cancel_job(info.context.caller, job.client_id):
            raise ValueError(f"id: no job {id} of yours")  # not theirs: a GraphQL error
        if job.state in TERMINAL_STATES:
            raise Refusal("id", f"job {id} is already {job.state}")
        handle = info.context.services.temporal.get_workflow_handle(job_workflow_id(str(id)))
        await handle.cancel()
        return job


@strawberry.type
class JobSubscription:
    @strawberry.subscription(
        description="Every event of the job after seq `after` (0 or -1: from the first), in "
        "order; ends with the job, at once for a job that already ended",
        permission_classes=[auth.SignedIn],
    )
    async def job_events(
        self, info: I, job_id: strawberry.ID, after: int = 0
    ) -> AsyncGenerator[JobEvent, None]:
        if await load_job(info, str(job_id)) is None:
            raise ValueError(f"jobId: no job {job_id} of yours")
        check_after(after)
        source = multiplex.Source("job", str(job_id), JobEvent.from_row, TERMINAL_EVENTS)
        with info.context.services.subscription_of(info.context.caller):
            async for event in live_rows(info, source, after):
                yield event

    @strawberry.subscription(
        description="The job's output as its runs print it, chunk by chunk after seq `after` "
        "(0: from the first kept); ends once the job has ended and every chunk was sent. "
        "The job's owner only",
        permission_classes=[auth.SignedIn],
    )
    async def job_log(
        self, info: I, job_id: strawberry.ID, after: int = 0
    ) -> AsyncGenerator[JobLogChunk, None]:
        services = info.context.services
        rows = await services.query("SELECT client_id FROM jobs WHERE job_id = ?", (str(job_id),))
        if not rows or not auth.can_read_job_log(info.context.caller, rows[0]["client_id"]):
            raise ValueError(f"jobId: no job {job_id} of yours")
        check_after(after)
        with services.subscription_of(info.context.caller):
            async for row in services.live_logs.follow(
                    services.views, str(job_id), max(after, 0), info.context.still_signed_in):
                yield JobLogChunk.from_row(row)
