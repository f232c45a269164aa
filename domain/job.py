"""The Job aggregate: one client job's whole lifecycle as past-tense events.

Each command is safe to repeat: it carries a dedupe key (the step and the
attempt) and does nothing when that fact is already recorded, because Temporal
may run the activity that issues it more than once.

A job's `env` is not recorded in the clear: its JobSubmitted event keeps the spec with
the env's names alone (each value "") and the env itself sealed by the caller
(`sealed_env`, infra/job_env.py), which only the control plane's key opens.

Digests (an input's, an output's) are recorded as protocol/digest.py writes them,
"blake3:<hex>"; events from before BLAKE3 held a bare sha256 under `sha256`, and are
upcast on reading to `digest` "sha256:<hex>", which still verifies.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import InvalidTransition
from domain.ids import business_id
from domain.limits import AMOUNT, ATTEMPT, BYTES, GPU_INDEX, JOB_GPUS, PRICE, check_step_data
from domain.outputs import output_key
from domain.states import TERMINAL_STATES, JobState
from protocol import digest

__all__ = ["TERMINAL_STATES", "Job", "JobState", "check_step_data", "env_names_only"]


def env_names_only(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as recorded and shown: its `env`'s names, each with the value ""."""
    return {**spec, "env": dict.fromkeys(spec.get("env") or {}, "")}


MAX_FAILURE_CHARS = 1024  # of a provider's own account of why its step failed
MAX_DIGEST_CHARS = 128  # "blake3:" and 64 hex digits, with room


class Job(Aggregate):
    # Lists of strings or numbers, copied flat by the application's aggregate cache.
    FLAT_LISTS = ("recorded",)

    @staticmethod
    def create_id(job_id: str, **_: Any) -> UUID:
        return business_id("job", job_id)

    class JobSubmitted(Aggregate.Created):
        """Version 2 added `sealed_env`: the env sealed, the spec keeping only its names.

        A version 1 event (and a canary's, whose seed its Canary records anyway) has none:
        its spec's env is the env itself, in the clear. Version 3 pins each input by its
        `digest`; before, by a bare `sha256`."""

        class_version = 3
        job_id: str
        client_id: str
        spec: dict[str, Any]
        max_cost_micro: int
        sealed_env: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["sealed_env"] = ""

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            digest.upcast_records(state["spec"].get("inputs"))

    class OutputsUploaded(Aggregate.Event):
        """A run's outputs as its provider reported them. Version 2: each entry's `digest`
        (before, a bare `sha256`)."""

        class_version = 2
        attempt: int
        provider_id: str
        manifest: list[dict[str, Any]]
        missing: list[str]

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            digest.upcast_records(state.get("manifest"))

    class ResultAccepted(Aggregate.Event):
        """The run whose outputs are the job's. Version 2: as OutputsUploaded."""

        class_version = 2
        attempt: int
        provider_id: str
        manifest: list[dict[str, Any]]

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            digest.upcast_records(state.get("manifest"))

    @event(JobSubmitted)
    def __init__(self, job_id: str, client_id: str, spec: dict[str, Any], max_cost_micro: int,
                 sealed_env: str):
        self.job_id = job_id
        self.client_id = client_id
        self.spec = spec
        self.sealed_env = sealed_env
        self.max_cost_micro = max_cost_micro
        self.state = JobState.SUBMITTED
        self.reason = ""
        self.provider_id: str | None = None
        self.attempt = 0
        self.recorded: list[str] = []
        self.settlement: dict[str, int] | None = None
        self.allocations: dict[int, str] = {}  # attempt -> provider
        self.manifests: dict[int, list[dict[str, Any]]] = {}  # attempt -> uploaded outputs
        self.accepted_provider = ""  # whose result verification accepted
        self.verified_success = False  # the verdict: accepted, and the job did what it asked

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STATES

    def spent(self, attempt: int) -> bool:
        """Whether this attempt already ran its command (a re-run would run it twice)."""
        return f"execution_finished:{attempt}" in self.recorded or attempt in self.manifests

    @property
    def verified_charge_micro(self) -> int:
        """What the client was charged for this job as verified work: its settlement's
        charge where its verdict was a verified success, else 0 (domain/ledger.py)."""
        if not self.verified_success or self.settlement is None:
            return 0
        return int(self.settlement["charged_micro"])

    def ran_on(self, except_attempt: int | None = None) -> set[str]:
        """The providers this job's runs were placed on (but `except_attempt`), those it lost,
        those whose run failed and those it gave up waiting for left out: another replica,
        check or verifier of the job must run elsewhere, even once their GPUs went back."""
        return {pid for attempt, pid in self.allocations.items()
                if attempt != except_attempt and not self.ran_elsewhere(attempt)
                and f"Unplaced:{attempt}" not in self.recorded}

    # Commands: check, then apply through a private @event method.

    def _once(self, key: str) -> bool:
        if key in self.recorded:
            return False
        if self.state in TERMINAL_STATES:
            raise InvalidTransition("", f"job {self.job_id} is {self.state}; cannot record {key}")
        return True

    def reject(self, reason: str) -> None:
        if self._once("JobRejected"):
            self._rejected(reason=reason)

    def record_escrow(self, amount_micro: int) -> None:
        AMOUNT.check("amount_micro", amount_micro)
        if self._once("FundsEscrowed"):
            self._escrowed(amount_micro=amount_micro)

    def queue(self, attempt: int) -> None:
        ATTEMPT.check("attempt", attempt)
        if self._once(f"JobQueued:{attempt}"):
            self._queued(attempt=attempt)

    def record_allocation(
        self, attempt: int, provider_id: str, gpu_indexes: list[int], price_micro: int
    ) -> None:
        ATTEMPT.check("attempt", attempt)
        JOB_GPUS.check("gpu_indexes", len(gpu_indexes))
        for n, index in enumerate(gpu_indexes):
            GPU_INDEX.check(f"gpu_indexes.{n}", index)
        PRICE.check("price_per_gpu_hour_micro", price_micro)
        if f"Unplaced:{attempt}" in self.recorded:
            raise InvalidTransition(
                "", f"job {self.job_id} stopped waiting for attempt {attempt}'s GPUs"
            )
        if self._once(f"GpusAllocated:{attempt}"):
            self._allocated(
                attempt=attempt,
                provider_id=provider_id,
                gpu_indexes=gpu_indexes,
                price_per_gpu_hour_micro=price_micro,
            )

    def record_step(self, step: str, attempt: int, data: dict[str, Any]) -> None:
        handlers: dict[str, Any] = {
            "inputs_staged": self._staged,
            "execution_started": self._started,
            "execution_finished": self._finished,
            "outputs_uploaded": self._uploaded,
        }
        if step not in handlers:
            raise InvalidTransition("", f"unknown job step {step!r}")
        ATTEMPT.check("attempt", attempt)
        check_step_data(step, data)
        if self._once(f"{step}:{attempt}"):
            handlers[step](attempt=attempt, **data)

    def record_unplaced(self, attempt: int, purpose: str, reason: str) -> None:
        """A run the workflow stopped waiting for: the network's check is skipped
        (CheckSkipped), a client's replica or tie-break could not be placed (RunUnplaced)."""
        if self._once(f"Unplaced:{attempt}"):
            if purpose == "check":
                self._check_skipped(attempt=attempt, reason=reason)
            else:
                self._run_unplaced(attempt=attempt, purpose=purpose, reason=reason)

    def note_released(self, provider_id: str) -> None:
        """This job's GPUs on a provider went back to it (also after the job ended)."""
        key = f"GpusReleased:{provider_id}"
        if key not in self.recorded:
            self._gpus_released(provider_id=provider_id)

    def note_reputation(self, provider_id: str, outcome_key: str, outcome: str) -> None:
        """An outcome of this job's run was recorded on its provider's reputation."""
        key = f"Reputation:{outcome_key}:{provider_id}"
        if key not in self.recorded:
            self._reputation_recorded(provider_id=provider_id, outcome_key=outcome_key,
                                      outcome=outcome)

    def record_provider_lost(self, attempt: int, provider_id: str, reason: str) -> None:
        if self._once(f"ProviderLost:{attempt}"):
            # Only the provider that held the attempt can be lost from it: nobody else's
            # reputation is hurt by naming them.
            if self.allocations.get(attempt) != provider_id:
                raise InvalidTransition(
                    "", f"attempt {attempt} of job {self.job_id} is not {provider_id}'s"
                )
            self._provider_lost(attempt=attempt, provider_id=provider_id, reason=reason)

    def record_run_failed(self, attempt: int, provider_id: str, reason: str) -> None:
        """The provider failed its step of this attempt with an error of its own: the run
        goes elsewhere. Its reputation is judged later (JobWorkflow: once another provider
        got through, the failure was this one's)."""
        if self._once(f"RunFailed:{attempt}"):
            if self.allocations.get(attempt) != provider_id:
                raise InvalidTransition(
                    "", f"attempt {attempt} of job {self.job_id} is not {provider_id}'s"
                )
            self._run_failed(attempt=attempt, provider_id=provider_id,
                             reason=reason[:MAX_FAILURE_CHARS])

    def ran_elsewhere(self, attempt: int) -> bool:
        """Whether this attempt's run ended without a result (its provider lost or failed)."""
        return f"ProviderLost:{attempt}" in self.recorded or f"RunFailed:{attempt}" in self.recorded

    def record_output_refused(self, attempt: int, path: str, provider_id: str, size: int,
                              declared: str, quota_bytes: int, usage: int, reason: str) -> None:
        """Storage refused this run's upload of a declared output for the client's quota
        (domain/outputs.py): the storage API's record, never a provider's. Once per output,
        and only while the run is live and has not reported its outputs."""
        ATTEMPT.check("attempt", attempt)
        for name, value in (("size", size), ("quota_bytes", quota_bytes), ("usage", usage)):
            BYTES.check(name, value)
        if path not in self.spec.get("outputs", []):
            raise InvalidTransition("", f"{path!r} is not a declared output of {self.job_id}")
        if (self.allocations.get(attempt) != provider_id or self.ran_elsewhere(attempt)
                or f"outputs_uploaded:{attempt}" in self.recorded):
            raise InvalidTransition("", f"attempt {attempt} of job {self.job_id} is not "
                                        f"{provider_id}'s live run")
        if self._once(f"OutputRefused:{attempt}:{path}"):
            self._output_refused(
                attempt=attempt, path=path, key=output_key(self.job_id, path, attempt),
                provider_id=provider_id, size=size, digest=declared[:MAX_DIGEST_CHARS],
                quota_bytes=quota_bytes, usage=usage, reason=reason[:MAX_FAILURE_CHARS])

    def refused_outputs(self, attempt: int) -> set[str]:
        """The outputs of this attempt whose upload storage refused for the client's quota."""
        prefix = f"OutputRefused:{attempt}:"
        return {k[len(prefix):] for k in self.recorded if k.startswith(prefix)}

    def record_verdict(self, accepted: bool, succeeded: bool, reason: str) -> None:
        if not self._once("Verdict"):
            return
        if accepted:
            self._verified(succeeded=succeeded, reason=reason)
        else:
            self._verification_failed(reason=reason)

    def accept_result(self, attempt: int) -> None:
        """These outputs are the job's: verification chose this run's (and its twins')."""
        if attempt not in self.manifests:
            raise InvalidTransition("", f"job {self.job_id} has no outputs from attempt {attempt}")
        if self._once("ResultAccepted"):
            self._result_accepted(
                attempt=attempt,
                provider_id=self.allocations.get(attempt, ""),
                manifest=self.manifests[attempt],
            )

    def record_settlement(
        self, charged_micro: int, provider_paid_micro: int, fee_micro: int, refunded_micro: int
    ) -> None:
        for name, amount in (("charged_micro", charged_micro),
                             ("provider_paid_micro", provider_paid_micro),
                             ("fee_micro", fee_micro), ("refunded_micro", refunded_micro)):
            AMOUNT.check(name, amount)
        if self._once("JobSettled"):
            self._settled(
                charged_micro=charged_micro,
                provider_paid_micro=provider_paid_micro,
                fee_micro=fee_micro,
                refunded_micro=refunded_micro,
            )

    def finish(self, succeeded: bool, reason: str, cancelled: bool = False) -> None:
        if "Finished" in self.recorded or self.state in TERMINAL_STATES:
            return
        if cancelled:
            self._cancelled(reason=reason)
        elif succeeded:
            self._succeeded()
        else:
            self._failed(reason=reason)

    # Events: deterministic bodies that only apply what the command computed.

    @event("JobRejected")
    def _rejected(self, reason: str) -> None:
        self.state, self.reason = JobState.REJECTED, reason
        self.recorded.append("JobRejected")

    @event("FundsEscrowed")
    def _escrowed(self, amount_micro: int) -> None:
        self.recorded.append("FundsEscrowed")

    @event("JobQueued")
    def _queued(self, attempt: int) -> None:
        self.state, self.attempt, self.provider_id = JobState.QUEUED, attempt, None
        self.recorded.append(f"JobQueued:{attempt}")

    @event("GpusAllocated")
    def _allocated(
        self, attempt: int, provider_id: str, gpu_indexes: list[int], price_per_gpu_hour_micro: int
    ) -> None:
        self.state, self.provider_id = JobState.STAGING, provider_id
        self.allocations[attempt] = provider_id
        self.recorded.append(f"GpusAllocated:{attempt}")

    @event("InputsStaged")
    def _staged(self, attempt: int, provider_id: str, files: int, bytes: int) -> None:
        self.recorded.append(f"inputs_staged:{attempt}")

    @event("ExecutionStarted")
    def _started(self, attempt: int, provider_id: str) -> None:
        self.state = JobState.RUNNING
        self.recorded.append(f"execution_started:{attempt}")

    @event("ExecutionFinished")
    def _finished(
        self,
        attempt: int,
        provider_id: str,
        exit_code: int | None,
        timed_out: bool,
        gpu_ms: int,
        log_tail: str,
    ) -> None:
        self.state = JobState.UPLOADING
        self.recorded.append(f"execution_finished:{attempt}")

    @event(OutputsUploaded)
    def _uploaded(
        self, attempt: int, provider_id: str, manifest: list[dict[str, Any]], missing: list[str]
    ) -> None:
        self.state = JobState.VERIFYING
        self.manifests[attempt] = manifest
        self.recorded.append(f"outputs_uploaded:{attempt}")

    @event("OutputRefused")
    def _output_refused(self, attempt: int, path: str, key: str, provider_id: str, size: int,
                        digest: str, quota_bytes: int, usage: int, reason: str) -> None:
        self.recorded.append(f"OutputRefused:{attempt}:{path}")

    @event("CheckSkipped")
    def _check_skipped(self, attempt: int, reason: str) -> None:
        self.recorded.append(f"Unplaced:{attempt}")

    @event("RunUnplaced")
    def _run_unplaced(self, attempt: int, purpose: str, reason: str) -> None:
        self.recorded.append(f"Unplaced:{attempt}")

    @event("GpusReleased")
    def _gpus_released(self, provider_id: str) -> None:
        self.recorded.append(f"GpusReleased:{provider_id}")

    @event("ReputationRecorded")
    def _reputation_recorded(self, provider_id: str, outcome_key: str, outcome: str) -> None:
        self.recorded.append(f"Reputation:{outcome_key}:{provider_id}")

    @event("ProviderLost")
    def _provider_lost(self, attempt: int, provider_id: str, reason: str) -> None:
        self.state, self.provider_id = JobState.QUEUED, None
        self.recorded.append(f"ProviderLost:{attempt}")

    @event("RunFailed")
    def _run_failed(self, attempt: int, provider_id: str, reason: str) -> None:
        self.state, self.provider_id = JobState.QUEUED, None
        self.recorded.append(f"RunFailed:{attempt}")

    @event(ResultAccepted)
    def _result_accepted(
        self, attempt: int, provider_id: str, manifest: list[dict[str, Any]]
    ) -> None:
        self.accepted_provider = provider_id
        self.recorded.append("ResultAccepted")

    @event("JobVerified")
    def _verified(self, succeeded: bool, reason: str) -> None:
        self.state = JobState.SETTLING
        self.verified_success = succeeded
        self.recorded.append("Verdict")

    @event("VerificationFailed")
    def _verification_failed(self, reason: str) -> None:
        self.state = JobState.SETTLING
        self.recorded.append("Verdict")

    @event("JobSettled")
    def _settled(
        self, charged_micro: int, provider_paid_micro: int, fee_micro: int, refunded_micro: int
    ) -> None:
        self.settlement = {
            "charged_micro": charged_micro,
            "provider_paid_micro": provider_paid_micro,
            "fee_micro": fee_micro,
            "refunded_micro": refunded_micro,
        }
        self.recorded.append("JobSettled")

    @event("JobSucceeded")
    def _succeeded(self) -> None:
        self.state = JobState.SUCCEEDED
        self.recorded.append("Finished")

    @event("JobCancelled")
    def _cancelled(self, reason: str) -> None:
        self.state, self.reason = JobState.CANCELLED, reason
        self.recorded.append("Finished")

    @event("JobFailed")
    def _failed(self, reason: str) -> None:
        self.state, self.reason = JobState.FAILED, reason
        self.recorded.append("Finished")
