"""A job's progress as the seven steps a person follows, driven by its events.

`Pipeline.apply(event)` is pure bookkeeping: the CLI's live display renders it,
and tests feed it event sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from client.models import JobEvent
from client.render import event_summary

STEPS = ("admit", "allocate", "stage", "execute", "upload", "verify", "settle")
# Steps a job goes through again on its next provider when one is lost.
_PER_PROVIDER = ("stage", "execute", "upload")


class StepState(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass
class Step:
    name: str
    state: StepState = StepState.PENDING
    detail: str = ""
    transient: bool = False  # the detail says what is under way, not what happened


@dataclass
class Pipeline:
    steps: dict[str, Step] = field(default_factory=lambda: {n: Step(n) for n in STEPS})
    provider_id: str | None = None
    attempt: int = 0
    queue_position: int | None = None
    outcome: str | None = None  # SUCCEEDED / FAILED / REJECTED once terminal
    reason: str = ""
    last_seq: int = 0
    notes: list[str] = field(default_factory=list)

    def state(self, name: str) -> StepState:
        return self.steps[name].state

    def _close(self, name: str, state: StepState, detail: str) -> None:
        """A step's own end: the ones before it are over too."""
        self._advance_to(name)
        self._set(name, state, detail)

    def _set(
        self, name: str, state: StepState, detail: str | None = None, transient: bool = False
    ) -> None:
        step = self.steps[name]
        step.state = state
        if detail is not None:
            step.detail = detail
            step.transient = transient

    def _advance_to(self, name: str) -> None:
        """Close the steps before `name`: events may skip a step's own start, and
        after a failure the steps jumped over were skipped, not done."""
        failed = any(st.state == StepState.FAILED for st in self.steps.values())
        for n in STEPS[: STEPS.index(name)]:
            step = self.steps[n]
            if step.state in (StepState.PENDING, StepState.ACTIVE):
                step.state = StepState.SKIPPED if failed else StepState.DONE
                if failed or step.transient:
                    step.detail = ""

    def _activate(self, name: str, detail: str, transient: bool = True) -> None:
        self._advance_to(name)
        self._set(name, StepState.ACTIVE, detail, transient)

    def apply(self, event: JobEvent) -> None:
        self.last_seq = max(self.last_seq, event.seq)
        d = event.data
        t = event.type
        if t == "JobSubmitted":
            self._activate("admit", "checking spec and balance")
        elif t == "FundsEscrowed":
            self._activate("admit", event_summary(event), transient=False)
        elif t == "JobQueued":
            pos = d.get("position", d.get("queue_position"))
            self.queue_position = int(pos) if isinstance(pos, int) else self.queue_position
            self._activate("allocate", self.queue_text())
        elif t == "GpusAllocated":
            self.provider_id = str(d.get("provider_id", "?"))
            self.attempt = int(d.get("attempt", self.attempt + 1))
            self.queue_position = None
            self._close("allocate", StepState.DONE, event_summary(event))
            self._activate("stage", "fetching inputs")
        elif t == "InputsStaged":
            self._close("stage", StepState.DONE, event_summary(event))
            self._activate("execute", "starting")
        elif t == "ExecutionStarted":
            self._activate("execute", f"running on {self.provider_id or 'provider'}")
        elif t == "ExecutionFinished":
            ok = d.get("exit_code") == 0 and not d.get("timed_out")
            self._close("execute", StepState.DONE if ok else StepState.FAILED, event_summary(event))
            self._activate("upload", "uploading outputs")
        elif t == "OutputsUploaded":
            self._close("upload", StepState.DONE, event_summary(event))
            self._activate("verify", "checking results")
        elif t == "ProviderLost":
            self.notes.append(event_summary(event) + "; re-allocating")
            for n in _PER_PROVIDER:
                self._set(n, StepState.PENDING, "")
            self._set("allocate", StepState.ACTIVE, "re-allocating on another provider", True)
            self.provider_id = None
        elif t == "JobVerified":
            self._close("verify", StepState.DONE, "results accepted")
            self._activate("settle", "paying the provider, refunding the rest")
        elif t == "VerificationFailed":
            self._close("verify", StepState.FAILED, str(d.get("reason", "verification failed")))
            self._activate("settle", "refunding")
        elif t == "JobSettled":
            self._close("settle", StepState.DONE, event_summary(event))
        elif t in ("JobSucceeded", "JobFailed", "JobRejected"):
            self._finish(t, str(d.get("reason", "")))

    def _finish(self, kind: str, reason: str) -> None:
        self.reason = reason
        if kind == "JobSucceeded":
            self.outcome = "SUCCEEDED"
            for step in self.steps.values():
                if step.state in (StepState.PENDING, StepState.ACTIVE):
                    step.state = StepState.DONE
                    step.detail = "" if step.transient else step.detail
            return
        self.outcome = "REJECTED" if kind == "JobRejected" else "FAILED"
        if kind == "JobRejected":
            self._set("admit", StepState.FAILED, reason)
        for step in self.steps.values():
            if step.state == StepState.ACTIVE:
                step.state = StepState.FAILED
                step.detail = reason or step.detail
            elif step.state == StepState.PENDING:
                step.state = StepState.SKIPPED
                step.detail = ""

    def queue_text(self) -> str:
        if self.queue_position is None:
            return "waiting for GPUs"
        return f"queued, position {self.queue_position}"

    def set_queue_position(self, position: int | None) -> None:
        """Queue position learnt by polling the job (events don't carry its changes)."""
        self.queue_position = position
        if self.state("allocate") == StepState.ACTIVE and position is not None:
            self.steps["allocate"].detail = self.queue_text()
