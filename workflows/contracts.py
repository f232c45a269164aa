"""The contracts between JobWorkflow and its activities: names, inputs, results.

Control activities run on the control task queue. The GPU steps (stage, execute,
upload) run there too, as *assignments* (activities/assign.py): the control worker
records one for the chosen provider and completes the activity asynchronously once
that provider's agent reports through the API (api/assignments.py). No provider ever
talks to Temporal. The control worker never imports the GPU side: it only knows these
names and dataclasses.
"""

from dataclasses import dataclass, field
from typing import Any

# The GPU steps' own contracts live in workflows/contracts_gpu.py (the provider agent imports
# them from there); named here too, with every other step's contracts.
from workflows.contracts_gpu import (  # noqa: F401
    MAX_REFUSAL_CHARS,
    CheckpointPlan,
    ExecuteRequest,
    ExecuteResult,
    InputTransfer,
    ManifestEntry,
    OutputTransfer,
    StageRequest,
    StageResult,
    TransferPlan,
    UploadRequest,
    UploadResult,
)

# No `from __future__ import annotations` here: with string annotations, Temporal's data
# converter compiled and evaluated every field's type again on each payload it decoded.


def job_workflow_id(job_id: str) -> str:
    return f"job-{job_id}"


# Activity names. Control side (activities/), GPU side (worker_gpu/).
ADMIT_JOB = "admit_job"
ALLOCATE_GPUS = "allocate_gpus"
PREPARE_TRANSFERS = "prepare_transfers"
RECORD_JOB_STEP = "record_job_step"
RECORD_JOB_STEPS = "record_job_steps"
MARK_PROVIDER_LOST = "mark_provider_lost"
# A provider failed its GPU step with an error of its own: the run goes elsewhere.
RECORD_RUN_FAILED = "record_run_failed"
VERIFY_JOB = "verify_job"
SETTLE_JOB = "settle_job"
RECORD_REPUTATION = "record_reputation"
RELEASE_GPUS = "release_gpus"
FINISH_JOB = "finish_job"
# A job's ending in one step and one transaction: settle, reputation, release, finish.
CLOSE_JOB = "close_job"
PLAN_CHECK = "plan_check"
# A run the workflow gave up placing (a check skipped, a tie-break or replica unplaced).
RECORD_UNPLACED = "record_unplaced"
# One finished run's GPUs go back to the provider at once (the job may still be verifying).
RELEASE_RUN = "release_run"
# The purpose record_unplaced is given for an attempt the workflow left (ATTEMPT_SPENT).
ABANDONED = "abandoned"

# An activity's refusal because the job has already ended (a Temporal reset re-ran it): the
# workflow ends with the job's recorded outcome (`JobEnded`, details: an EndedJob).
JOB_ENDED = "JobEnded"

STAGE_INPUTS = "stage_inputs"
EXECUTE_JOB = "execute_job"
UPLOAD_OUTPUTS = "upload_outputs"
GPU_STEPS = (STAGE_INPUTS, EXECUTE_JOB, UPLOAD_OUTPUTS)


def step_result(kind: str, data: dict[str, Any]) -> Any:
    """A GPU step's result as its dataclass, from the JSON the API checked and kept."""
    if kind == STAGE_INPUTS:
        return StageResult(**data)
    if kind == EXECUTE_JOB:
        return ExecuteResult(**data)
    return UploadResult([ManifestEntry(**m) for m in data["manifest"]],
                        list(data["missing"]), dict(data.get("refused", {})))


# The failure type of an assignment its provider did not pick up in time: a lost provider.
NOT_PICKED_UP = "AssignmentNotPickedUp"
# The failure type of a handed-out assignment whose provider fell silent while the network
# could hear it (activities/assign.py watch_assignments): a lost provider too.
PROVIDER_SILENT = "ProviderSilent"
# The refusal of a step of an attempt that can neither run (again) nor be taken over: a
# Temporal reset's new run reached it after an earlier run had handed its step out and that
# step closed with no result to take (activities/assign.py), or after the attempt had run
# and its results are no longer kept (activities/refusals.py spent). The workflow leaves
# the attempt (nobody blamed, nobody paid for it) and runs a fresh one (workflows/job.py).
ATTEMPT_SPENT = "AttemptSpent"
# Failure types the control plane raises and the workflow acts on: a provider failing its
# assignment may not use them (a provider's "JobEnded" would end a live job as if a reset
# had found it over).
CONTROL_PLANE_ERRORS = frozenset({
    NOT_PICKED_UP, PROVIDER_SILENT, JOB_ENDED, ATTEMPT_SPENT, "NotOurWorkflow", "NoCapacity",
    "UnknownJob",
})


# A control step is one short transaction (allocate waits at most a few seconds a try), so
# a step that has not finished in this long ran on a control worker that died: Temporal
# gives it to another (or the restarted one) this soon, rather than after a minute.
CONTROL_STEP_S = 20.0


@dataclass
class JobInput:
    job_id: str
    client_id: str
    # Fault detection, fixed when the job starts so that replays see the same values.
    gpu_heartbeat_timeout_s: float = 10.0
    gpu_schedule_to_start_timeout_s: float = 30.0
    max_provider_attempts: int = 3
    # How long the network's own processes (API, control worker, Temporal) may be away
    # before a GPU step is given up for want of heartbeats: a provider is judged silent only
    # while the network can hear it (workflows/steps.py gpu_step).
    gpu_outage_grace_s: float = 60.0


@dataclass
class EndedJob:
    """A job's recorded ending: what a re-run workflow returns instead of running again."""

    state: str
    reason: str
    provider_id: str = ""
    charged_micro: int = 0


@dataclass
class AdmitResult:
    admitted: bool
    max_cost_micro: int = 0
    reason: str = ""
    replicas: int = 1  # run on this many distinct providers
    verifier: list[str] = field(default_factory=list)  # a command to run over the outputs
    # How long a run the network adds (its own check) may wait for GPUs before it is
    # skipped, and how long a client's further replica or tie-break may wait once the job
    # holds GPUs; 0 (histories from before these bounds): no bound.
    check_wait_s: float = 0.0
    replica_wait_s: float = 0.0
    # Set when the job had already ended (a Temporal reset re-ran admission): its record.
    ended: EndedJob | None = None


@dataclass
class UnplacedRun:
    job_id: str
    attempt: int
    # "check" | "tie-break" | "replica" | "verifier"; or ABANDONED: an attempt a reset's new
    # run could not take over (c.ATTEMPT_SPENT), left for a fresh one.
    purpose: str
    reason: str


@dataclass
class ReleaseRunRequest:
    job_id: str
    attempt: int
    provider_id: str


@dataclass
class AllocateRequest:
    job_id: str
    attempt: int
    excluded_provider_ids: list[str] = field(default_factory=list)
    # For prepare_transfers: "run" the job, or "verify" the outputs of `source_attempt`.
    purpose: str = "run"
    source_attempt: int = 0
    # Placed here only where no other provider can take the run (lost once running it).
    avoided_provider_ids: list[str] = field(default_factory=list)


@dataclass
class Allocation:
    job_id: str
    attempt: int
    provider_id: str
    gpu_indexes: list[int]
    price_per_gpu_hour_micro: int


@dataclass
class JobStep:
    """A fact the workflow learnt from a GPU activity, to be recorded as a domain event."""

    job_id: str
    step: str  # "inputs_staged" | "execution_started" | "execution_finished" | "outputs_uploaded"
    provider_id: str
    attempt: int
    files: int = 0
    bytes: int = 0
    exit_code: int | None = None
    timed_out: bool = False
    gpu_ms: int = 0
    log_tail: str = ""
    manifest: list[ManifestEntry] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


@dataclass
class JobSteps:
    """Several facts at once, recorded in one transaction (one round trip for the workflow)."""

    steps: list[JobStep]


@dataclass
class ProviderLost:
    job_id: str
    attempt: int
    provider_id: str
    reason: str


@dataclass
class RunFailed:
    job_id: str
    attempt: int
    provider_id: str
    reason: str


@dataclass
class ReplicaReport:
    """One provider's run of the job, as the workflow saw it."""

    attempt: int
    provider_id: str
    price_per_gpu_hour_micro: int
    exit_code: int | None
    timed_out: bool
    gpu_ms: int
    manifest: list[ManifestEntry]
    missing: list[str]
    payer: str = "client"  # "network": a check the network added on its own
    refused: dict[str, str] = field(default_factory=dict)  # UploadResult.refused


@dataclass
class VerifyRequest:
    job_id: str
    attempt: int
    provider_id: str
    exit_code: int | None
    timed_out: bool
    manifest: list[ManifestEntry]
    missing: list[str]
    others: list[ReplicaReport] = field(default_factory=list)  # more runs to compare with
    refused: dict[str, str] = field(default_factory=dict)  # UploadResult.refused


@dataclass
class Verdict:
    accepted: bool  # the provider's report holds: it is paid for its GPU time
    succeeded: bool  # the job did what it was asked: exit 0 and every output present
    reason: str
    accepted_attempts: list[int] = field(default_factory=list)
    mismatched_attempts: list[int] = field(default_factory=list)  # rejected: not paid
    decided: bool = True  # False: runs disagree with no majority; another run can decide
    # Of the rejected, the runs whose report storage contradicts: the only ones a judgement
    # blames. A run outvoted by others is not paid, and recorded `outvoted`: back on
    # probation, in the score only once several clients outvoted it (workflows/runs.py).
    contradicted_attempts: list[int] = field(default_factory=list)


@dataclass
class CheckRequest:
    job_id: str
    provider_id: str
    draw: float  # uniform in [0, 1), drawn by the workflow so replays see the same


@dataclass
class CheckDecision:
    run_check: bool
    reason: str


@dataclass
class PaymentLine:
    provider_id: str
    gpu_ms: int
    price_per_gpu_hour_micro: int
    payer: str = "client"
    # Charged to the payer, not paid to the provider (the network keeps it): a timed-out
    # run with no outputs that nothing checked, whose window its provider chose.
    withheld: bool = False


@dataclass
class SettleRequest:
    job_id: str
    provider_id: str
    gpu_ms: int
    price_per_gpu_hour_micro: int
    pay_provider: bool
    payments: list[PaymentLine] | None = None  # when set, these and not the fields above


@dataclass
class Settlement:
    charged_micro: int
    provider_paid_micro: int
    fee_micro: int
    refunded_micro: int
    # CLOSE_JOB's: the job's recorded ending once closed (a cancel's close may find it ended
    # by the close the cancel interrupted, whose thread went on and committed first).
    ended: EndedJob | None = None


@dataclass
class ReputationRequest:
    job_id: str
    provider_id: str
    outcome: str  # "success" | "failure" | "timeout" | "mismatch" | "lost" | "outvoted"


@dataclass
class ReleaseRequest:
    job_id: str
    provider_id: str


@dataclass
class FinishRequest:
    job_id: str
    succeeded: bool
    reason: str
    cancelled: bool = False


@dataclass
class CloseRequest:
    """What SETTLE_JOB, RECORD_REPUTATION for each outcome, RELEASE_GPUS for each provider
    and FINISH_JOB did one after the other, in one step (answered with the Settlement; all
    zero where `settle` is None: nothing to settle, as for a job never admitted)."""

    settle: SettleRequest | None
    outcomes: list[ReputationRequest]
    release_provider_ids: list[str]
    finish: FinishRequest


@dataclass
class JobResult:
    job_id: str
    state: str  # "SUCCEEDED" | "FAILED"
    reason: str
    provider_id: str = ""
    charged_micro: int = 0


# Known-answer canaries (workflows/canary.py, activities/canary.py, domain/canary.py).

CANARY_WORKFLOW = "CanaryWorkflow"
PLAN_CANARY = "plan_canary"
START_CANARY = "start_canary"
CLOSE_CANARY = "close_canary"


def canary_workflow_id(origin_job_id: str, provider_id: str) -> str:
    return f"canary-{origin_job_id}-{provider_id}"


@dataclass
class CanaryRequest:
    job_id: str  # the job whose accepted run may be followed by a canary
    provider_id: str
    draw: float  # uniform in [0, 1), drawn by the workflow so replays see the same


@dataclass
class CanaryPlan:
    run: bool
    reason: str
    seed: str = ""  # 32 hex digits: the canary's work and known answer follow from it
    delay_s: float = 0.0  # wait this long first, so a canary does not follow a job at once


@dataclass
class CanaryInput:
    origin_job_id: str
    provider_id: str
    seed: str
    delay_s: float = 0.0
    gpu_heartbeat_timeout_s: float = 10.0
    gpu_schedule_to_start_timeout_s: float = 30.0
    gpu_outage_grace_s: float = 60.0


@dataclass
class CanaryStartRequest:
    origin_job_id: str
    provider_id: str
    seed: str


@dataclass
class CanaryStart:
    started: bool  # False: skipped (provider offline, no free GPU, no runtime that fits)
    reason: str
    job_id: str = ""
    client_id: str = ""
    gpu_indexes: list[int] = field(default_factory=list)
    price_per_gpu_hour_micro: int = 0


@dataclass
class CanaryReport:
    """How the canary's run went, as the workflow saw it; `lost` or `void` end it unjudged."""

    origin_job_id: str
    provider_id: str
    attempt: int
    exit_code: int | None = None
    timed_out: bool = False
    gpu_ms: int = 0
    manifest: list[ManifestEntry] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    lost: bool = False  # the provider stopped answering (already recorded as lost)
    void: str = ""  # the run could not be judged, and why


@dataclass
class CanaryResult:
    origin_job_id: str
    provider_id: str
    job_id: str
    outcome: str  # success | failure | timeout | mismatch | lost | void | skipped
    reason: str
    paid_micro: int = 0
