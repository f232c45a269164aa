"""The control steps' refusals: a step of a job that ended, of an attempt that already ran.

A Temporal reset may run a job's workflow, or part of it, again. Its steps are refused
rather than run twice: a step of a job that ended answers the job's recorded ending (the
workflow ends with it, nothing is stored again), and a run of an attempt whose command an
earlier run handed out takes that run's results over, or is refused (`AttemptSpent`,
activities/assign.py): the workflow then leaves that attempt for a fresh one.
"""

from __future__ import annotations

from dataclasses import asdict

from temporalio import activity
from temporalio.exceptions import ApplicationError

from domain.job import Job
from infra.assignments import AssignmentBoard
from workflows import contracts as c


def refuse(err: Exception) -> ApplicationError:
    """A refusal for good (a domain error): the workflow is not to retry the step."""
    return ApplicationError(str(err), type=type(err).__name__, non_retryable=True)


def ended_job(job: Job) -> c.EndedJob:
    charged = (job.settlement or {}).get("charged_micro", 0)
    return c.EndedJob(job.state, job.reason, job.accepted_provider, charged)


def ended(job: Job, step: str) -> ApplicationError:
    """The refusal of a step for a job that has already ended (a Temporal reset re-ran it):
    the workflow ends with the job's recorded outcome, and nothing runs or is stored again."""
    return ApplicationError(
        f"job {job.job_id} has already ended ({job.state}); {step} is not run again",
        asdict(ended_job(job)), type=c.JOB_ENDED, non_retryable=True,
    )


def live(job: Job, step: str) -> None:
    """Refuse a step of a job that ended.

    A reset's new run may go through an attempt that already ran (its steps are recorded
    once): its GPU steps take the earlier run's results over, or are refused
    (AttemptSpent: the workflow runs a fresh attempt) rather than run again in it
    (activities/assign.py)."""
    if job.ended:
        raise ended(job, step)


# The GPU steps of an attempt, by the job step that records each one's result.
RECORDED = {c.EXECUTE_JOB: "execution_finished", c.UPLOAD_OUTPUTS: "outputs_uploaded"}


def spent(board: AssignmentBoard, job: Job, attempt: int, step: str) -> None:
    """Refuse a run of an attempt that already ran (a reset's new run goes through it
    again) unless the assignment board keeps the results of its recorded GPU steps: the
    new run takes those over (activities/assign.py), nothing runs a second time. Refused
    (kept a day: infra/assignments.py KEEP_FINISHED_S), the workflow runs a fresh attempt."""
    if not job.spent(attempt):
        return
    recorded = [kind for kind, name in RECORDED.items() if f"{name}:{attempt}" in job.recorded]
    workflow_id = (activity.info().workflow_id or "" if activity.in_activity()
                   else c.job_workflow_id(job.job_id.split("#", 1)[0]))
    if all(board.kept(workflow_id, job.job_id, attempt, kind) for kind in recorded):
        return
    raise ApplicationError(
        f"job {job.job_id} attempt {attempt} has already run; {step} is not run again; "
        "a fresh attempt runs", type=c.ATTEMPT_SPENT, non_retryable=True,
    )
