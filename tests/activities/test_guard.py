"""Who may run a control step (activities/guard.py): the workflow of the step's own job."""

from __future__ import annotations

from activities.guard import JOB_WORKFLOW, Callers
from workflows import contracts as c

CALLERS = Callers(None)  # no domain: a canary job's steps are refused


def step(job_id: str) -> c.JobStep:
    return c.JobStep(job_id, "inputs_staged", "p", 1)


def test_a_jobs_steps_run_only_in_its_own_job_workflow() -> None:
    req = c.FinishRequest("j1", True, "")
    assert CALLERS.allowed(JOB_WORKFLOW, "job-j1", req)
    assert not CALLERS.allowed(JOB_WORKFLOW, "job-j2", req)  # another job's workflow
    assert not CALLERS.allowed(JOB_WORKFLOW, "outside-1", req)  # ours, started elsewhere
    assert not CALLERS.allowed("OutsideWorkflow", "job-j1", req)
    assert not CALLERS.allowed(c.CANARY_WORKFLOW, "job-j1", req)


def test_a_check_runs_steps_count_as_its_jobs_and_batches_are_of_one_job() -> None:
    assert CALLERS.allowed(JOB_WORKFLOW, "job-j1", step("j1#check-1"))
    assert CALLERS.allowed(JOB_WORKFLOW, "job-j1",
                           c.JobSteps([step("j1"), step("j1#check-1")]))
    assert not CALLERS.allowed(JOB_WORKFLOW, "job-j1", c.JobSteps([step("j1"), step("j2")]))
    assert not CALLERS.allowed(JOB_WORKFLOW, "job-", c.JobSteps([]))


def test_a_close_runs_only_in_its_jobs_workflow_and_every_part_names_that_job() -> None:
    def close(settled: str, blamed: str) -> c.CloseRequest:
        return c.CloseRequest(c.SettleRequest(settled, "p", 1, 1, True),
                              [c.ReputationRequest(blamed, "p", "success")], ["p"],
                              c.FinishRequest("j1", True, ""))

    assert CALLERS.allowed(JOB_WORKFLOW, "job-j1", close("j1", "j1#2"))
    assert CALLERS.allowed(JOB_WORKFLOW, "job-j1", c.CloseRequest(
        None, [], [], c.FinishRequest("j1", False, "", cancelled=True)))
    assert not CALLERS.allowed(JOB_WORKFLOW, "job-j2", close("j1", "j1"))
    assert not CALLERS.allowed(JOB_WORKFLOW, "job-j1", close("j2", "j1"))
    assert not CALLERS.allowed(JOB_WORKFLOW, "job-j1", close("j1", "j2#1"))


def test_a_canarys_start_and_close_run_only_in_its_own_canary_workflow() -> None:
    start = c.CanaryStartRequest("j1", "prov-a", "seed")
    assert CALLERS.allowed(c.CANARY_WORKFLOW, c.canary_workflow_id("j1", "prov-a"), start)
    assert not CALLERS.allowed(c.CANARY_WORKFLOW, c.canary_workflow_id("j1", "prov-b"), start)
    assert not CALLERS.allowed(JOB_WORKFLOW, "job-j1", start)
    # A canary job's own steps need the domain's record of that canary: none here.
    assert not CALLERS.allowed(c.CANARY_WORKFLOW, c.canary_workflow_id("j1", "prov-a"),
                               step("some-canary-job"))
