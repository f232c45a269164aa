"""Who may run a control step: the network's own workflow of the job the step is for.

Defence in depth, were Temporal ever reachable (the deployment keeps it internal): every
activity of the control worker (activities/) checks, before it touches a store, that the
workflow that scheduled it (as a regular or a local activity alike) is

- the job's own JobWorkflow, workflow id `job-<job_id>` (Temporal runs one per id), for a
  step whose request names the job (a check run's `<job_id>#...` counts as the job);
- the canary's own CanaryWorkflow, workflow id `canary-<origin job>-<provider>`, for a
  step of that canary: its start and close (which name the origin job and provider), and
  the steps of the canary job the domain recorded for that pair (its transfers, its GPU
  steps, its release).

Anything else is refused with the non-retryable `NotOurWorkflow`: a workflow of an
outsider's own (even named JobWorkflow, on the control queue), or the network's JobWorkflow
started under another id with a victim's job in its input, whose local control steps are
refused too. Called outside an activity (tests, tools): allowed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from temporalio import activity
from temporalio.exceptions import ApplicationError

from domain.application import Network
from workflows import contracts as c

JOB_WORKFLOW = "JobWorkflow"

F = TypeVar("F", bound=Callable[..., Any])


class Guarded(Protocol):
    callers: Callers


class Callers:
    """Decides whether the workflow running the current activity may run it for `req`."""

    def __init__(self, network: Network | None):
        self.network = network  # for a canary's steps; None: canary steps are refused

    def check(self, req: Any) -> None:
        if not activity.in_activity():
            return
        info = activity.info()
        if not self.allowed(info.workflow_type or "", info.workflow_id or "", req):
            raise ApplicationError(
                f"{info.activity_type} runs only inside the network's own workflow of its job"
                f" (scheduled by {info.workflow_type} {info.workflow_id!r})",
                type="NotOurWorkflow", non_retryable=True,
            )

    def allowed(self, workflow_type: str, workflow_id: str, req: Any) -> bool:
        origin = getattr(req, "origin_job_id", None)
        if isinstance(origin, str):  # a canary's start and close
            return workflow_type == c.CANARY_WORKFLOW and workflow_id == c.canary_workflow_id(
                origin, str(getattr(req, "provider_id", ""))
            )
        job_id = job_of(req).split("#", 1)[0]
        if not job_id:
            return False
        if workflow_type == JOB_WORKFLOW:
            return workflow_id == c.job_workflow_id(job_id)
        if workflow_type == c.CANARY_WORKFLOW:
            return self._canary_job(workflow_id, job_id)
        return False

    def _canary_job(self, workflow_id: str, job_id: str) -> bool:
        """The canary job the domain recorded for this canary workflow's (origin, provider):
        the provider is the canary job's own (its one allocation), the origin the rest."""
        if self.network is None:
            return False
        job = self.network.find_job(job_id)
        provider_id = job.allocations.get(1) if job is not None else None
        prefix, suffix = "canary-", f"-{provider_id}"
        if not provider_id or not (workflow_id.startswith(prefix)
                                   and workflow_id.endswith(suffix)):
            return False
        origin = workflow_id[len(prefix):-len(suffix)]
        canary = self.network.canary(origin, provider_id)
        return canary is not None and canary.job_id == job_id


def job_of(req: Any) -> str:
    if isinstance(req, c.JobSteps):
        jobs = {s.job_id.split("#", 1)[0] for s in req.steps}
        return jobs.pop() if len(jobs) == 1 else ""  # steps of one job only
    if isinstance(req, c.CloseRequest):  # a close of one job only, in every part
        jobs = {req.finish.job_id, *(o.job_id.split("#", 1)[0] for o in req.outcomes)}
        jobs |= {req.settle.job_id} if req.settle is not None else set()
        return jobs.pop() if len(jobs) == 1 else ""
    return str(getattr(req, "job_id", ""))


def ours(fn: F) -> F:
    """The step runs only for the workflow of its own job (Callers); put it under
    @activity.defn, on a method of a class with `callers`."""

    @functools.wraps(fn)
    def guarded(self: Guarded, req: Any) -> Any:
        self.callers.check(req)
        return fn(self, req)

    return cast(F, guarded)
