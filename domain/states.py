"""A job's states, defined once: the Job aggregate, the read model, the workflow's search
attribute, the metrics and the API take them from here (no I/O, no eventsourcing: the
workflow sandbox imports this module)."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    SUBMITTED = "SUBMITTED"
    REJECTED = "REJECTED"
    QUEUED = "QUEUED"
    STAGING = "STAGING"
    RUNNING = "RUNNING"
    UPLOADING = "UPLOADING"
    VERIFYING = "VERIFYING"
    SETTLING = "SETTLING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def active(self) -> bool:
        """Between allocation and settlement: the job holds GPUs."""
        return self in _ACTIVE


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.REJECTED,
                       JobState.CANCELLED})
_ACTIVE = frozenset({JobState.STAGING, JobState.RUNNING, JobState.UPLOADING,
                     JobState.VERIFYING, JobState.SETTLING})

# Plain strings, in declaration order: SQL parameters and `in` tests alike.
JOB_STATES: tuple[str, ...] = tuple(s.value for s in JobState)
TERMINAL_STATES: tuple[str, ...] = tuple(s.value for s in JobState if s.terminal)
ACTIVE_STATES: tuple[str, ...] = tuple(s.value for s in JobState if s.active)

# Every event of a Job, by name, and the state it leaves the job in (None: unchanged).
# The aggregate's event bodies (domain/job.py) move to exactly these states (a test holds
# them to it); the read model folds them from here.
STATE_AFTER: dict[str, JobState | None] = {
    "JobSubmitted": JobState.SUBMITTED,
    "JobRejected": JobState.REJECTED,
    "FundsEscrowed": None,
    "JobQueued": JobState.QUEUED,
    "GpusAllocated": JobState.STAGING,
    "InputsStaged": None,
    "ExecutionStarted": JobState.RUNNING,
    "ExecutionFinished": JobState.UPLOADING,
    "OutputRefused": None,
    "OutputsUploaded": JobState.VERIFYING,
    "ProviderLost": JobState.QUEUED,
    "RunFailed": JobState.QUEUED,
    "JobVerified": JobState.SETTLING,
    "VerificationFailed": JobState.SETTLING,
    "JobSettled": None,
    "ResultAccepted": None,
    "CheckSkipped": None,
    "RunUnplaced": None,
    "GpusReleased": None,
    "ReputationRecorded": None,
    "JobSucceeded": JobState.SUCCEEDED,
    "JobFailed": JobState.FAILED,
    "JobCancelled": JobState.CANCELLED,
}
# The events that end a job: a job's event stream stops after one of them.
TERMINAL_EVENTS: tuple[str, ...] = tuple(
    name for name, state in STATE_AFTER.items() if state is not None and state.terminal
)

# The state each of JobWorkflow's steps stands for (its search attribute). The terminal
# state comes from the workflow's result.
STATE_OF_STEP: dict[str, JobState] = {
    "admit": JobState.SUBMITTED,
    "allocate": JobState.QUEUED,
    "stage": JobState.STAGING,
    "execute": JobState.RUNNING,
    "upload": JobState.UPLOADING,
    "verify": JobState.VERIFYING,
    "verifier": JobState.VERIFYING,
    "settle": JobState.SETTLING,
}
