"""JobWorkflow's activities, played by a small in-memory network, for time-skipping tests.

The workflow code under test is the real one; only the world around it (stores, scheduler,
providers) is this: a set of providers that can be placed, providers that misbehave (lie
about their outputs, stop answering, never pick their work up, refuse it), a verdict by
majority of the runs' outputs, steps that may block until they are cancelled. Every call is
recorded, so a test can say what the workflow asked for, in what order.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory, CancelledError

from activities.verify import ending
from tests.support.temporal import TEST_SERVER as TEST_SERVER
from workflows import contracts as c

HONEST_SHA, LIARS_SHA = "0" * 64, "f" * 64
VERIFIER = ["python3", "check.py"]  # the client's verifier command, when the job has one


def blocked(name: str) -> str:
    """What `wait_started` waits for to know that the step `name` is blocked now."""
    return f"{name} (blocked)"


# A test's `start` fixture (conftest.py): start a job's workflow in this network.
Start = Callable[..., Awaitable[WorkflowHandle[Any, c.JobResult]]]


@dataclass
class StubNetwork:
    providers: list[str] = field(default_factory=lambda: ["p1", "p2"])
    placeable: set[str] = field(default_factory=lambda: {"p1", "p2"})
    replicas: int = 1
    run_check: bool = False
    undecided_first: bool = False  # the first verdict: runs disagree, another run decides
    check_wait_s: float = 60.0
    replica_wait_s: float = 120.0
    ended: c.EndedJob | None = None
    ended_at: str = ""  # this step refuses: the job had ended (as after a Temporal reset)
    try_s: float = 0.0  # how long an allocation try with no GPUs free waits (real time)
    block: set[str] = field(default_factory=set)  # activity names that wait until cancelled
    admitted: bool = True
    verifier: list[str] = field(default_factory=list)  # AdmitResult.verifier
    liars: set[str] = field(default_factory=set)  # providers whose outputs differ
    answers: dict[str, str] = field(default_factory=dict)  # a provider's own output digest
    exit_codes: dict[str, int] = field(default_factory=dict)  # a provider's command exits so
    timeouts: set[str] = field(default_factory=set)  # providers whose command runs out of time
    timeouts_writing: set[str] = field(default_factory=set)  # ... and that still upload out.txt
    empty: set[str] = field(default_factory=set)  # providers whose run writes nothing
    verifier_exit: int = 0  # the client's verifier command exits so
    # A provider that stops answering during this GPU step (its heartbeats stop: Temporal
    # times the step out), that the control plane finds silent during it, or that never
    # picks this step's assignment up.
    silent_at: dict[str, str] = field(default_factory=dict)
    silenced_at: dict[str, str] = field(default_factory=dict)
    unpicked_at: dict[str, str] = field(default_factory=dict)
    # A provider that keeps heartbeating this GPU step and never ends it: Temporal times it
    # out at its start-to-close limit.
    slow_at: dict[str, str] = field(default_factory=dict)
    refuses: dict[str, tuple[str, str]] = field(default_factory=dict)  # pid: (step, type)
    # The control plane refuses this GPU step of the provider's attempt once, as one a reset's
    # new run can neither run again nor take over (AttemptSpent).
    spent_at: dict[str, str] = field(default_factory=dict)
    # Once lost, a provider of `stays_down` is never placeable again; one of `recovers`
    # answers again (its silence or unpicked step was once).
    stays_down: set[str] = field(default_factory=set)
    recovers: set[str] = field(default_factory=set)
    blocks_at: dict[str, str] = field(default_factory=dict)  # pid: a GPU step it blocks in
    # A close cancelled while blocked goes on in its thread and commits (a real one runs
    # with no_thread_cancel_exception) once the cancel's admission looked: the job ends as
    # that close said (`late_ending`), which only the cancel's own close then finds.
    close_commits_anyway: bool = False
    late_ending: c.EndedJob | None = None
    calls: list[tuple[str, Any]] = field(default_factory=list)
    started: dict[str, asyncio.Event] = field(default_factory=dict)
    verdicts: int = 0
    allocations: dict[int, str] = field(default_factory=dict)
    lost_attempts: set[int] = field(default_factory=set)  # their GPUs went back

    def called(self, name: str) -> list[Any]:
        return [arg for n, arg in self.calls if n == name]

    def _seen(self, name: str, arg: Any) -> None:
        self.calls.append((name, arg))
        self.started.setdefault(name, asyncio.Event()).set()

    async def wait_started(self, name: str, timeout_s: float = 20.0) -> None:
        event = self.started.setdefault(name, asyncio.Event())
        await asyncio.wait_for(event.wait(), timeout_s)

    async def _maybe_block(self, name: str, provider_id: str = "") -> None:
        if self.blocks_at.get(provider_id) == name:
            del self.blocks_at[provider_id]  # once, as below
            self.block.add(name)
        if name in self.block:
            self.block.discard(name)  # once: a retry (or the cancel's own settle) goes on
            self.started.setdefault(blocked(name), asyncio.Event()).set()
            while True:
                await asyncio.sleep(0.2)
                if activity.info().is_local:
                    continue  # a local activity is cancelled by its workflow directly
                activity.heartbeat()

    # Control side

    def control(self) -> list[Callable[..., Any]]:
        net = self

        @activity.defn(name=c.ADMIT_JOB)
        async def admit_job(inp: c.JobInput) -> c.AdmitResult:
            net._seen(c.ADMIT_JOB, inp)
            await net._maybe_block(c.ADMIT_JOB)
            if not net.admitted:
                return c.AdmitResult(False, 0, "insufficient funds: the job may cost 1 credit")
            return c.AdmitResult(True, 1_000_000, "", net.replicas, list(net.verifier),
                                 net.check_wait_s, net.replica_wait_s, net.ended)

        @activity.defn(name=c.ALLOCATE_GPUS)
        async def allocate_gpus(req: c.AllocateRequest) -> c.Allocation:
            net._seen(c.ALLOCATE_GPUS, req)
            if req.attempt in net.allocations:
                pid = net.allocations[req.attempt]
                return c.Allocation(req.job_id, req.attempt, pid, [0], 1_000_000)
            held = {p for a, p in net.allocations.items() if a not in net.lost_attempts}
            free = [p for p in net.providers if p in net.placeable
                    and p not in req.excluded_provider_ids and p not in held]
            # As the scheduler does: a provider the run avoids only when no other is free.
            free.sort(key=lambda p: p in req.avoided_provider_ids)
            if not free:
                # As the real one does: it waits its try out in line, heartbeating, then
                # says why there is no placement, or that it was cancelled.
                waited = 0.0
                while waited < net.try_s:
                    activity.heartbeat("no eligible GPUs free")
                    await asyncio.shield(asyncio.sleep(0.1))
                    waited += 0.1
                    if activity.is_cancelled():
                        raise CancelledError("cancelled while it waited for GPUs")
                raise ApplicationError("no eligible GPUs free", type="NoCapacity",
                                       category=ApplicationErrorCategory.BENIGN)
            net.allocations[req.attempt] = free[0]
            return c.Allocation(req.job_id, req.attempt, free[0], [0], 1_000_000)

        def plain(name: str, result: Callable[[Any], Any] = lambda _: None) -> Any:
            async def step(arg: Any) -> Any:
                net._seen(name, arg)
                if name == net.ended_at:
                    raise ApplicationError(
                        "the job has already ended", asdict(c.EndedJob("SUCCEEDED", "", "p1", 7)),
                        type=c.JOB_ENDED, non_retryable=True,
                    )
                await net._maybe_block(name)
                return result(arg)

            return step

        @activity.defn(name=c.PREPARE_TRANSFERS)
        async def prepare_transfers(req: c.AllocateRequest) -> c.TransferPlan:
            # The verifier's run reads the accepted outputs and runs the verifier command.
            command = VERIFIER if req.purpose == "verify" else ["true"]
            return await plain(c.PREPARE_TRANSFERS, lambda r: c.TransferPlan(
                r.job_id, r.attempt, [c.InputTransfer("in.txt", "u", "0" * 64, 1)],
                [c.OutputTransfer("out.txt", "k", "u")], command, timeout_s=60))(req)

        @activity.defn(name=c.RECORD_JOB_STEP)
        async def record_job_step(step: c.JobStep) -> None:
            await plain(c.RECORD_JOB_STEP)(step)

        @activity.defn(name=c.RECORD_JOB_STEPS)
        async def record_job_steps(steps: c.JobSteps) -> None:
            await plain(c.RECORD_JOB_STEPS)(steps)

        @activity.defn(name=c.MARK_PROVIDER_LOST)
        async def mark_provider_lost(req: c.ProviderLost) -> None:
            await plain(c.MARK_PROVIDER_LOST)(req)
            net.lost_attempts.add(req.attempt)
            if req.provider_id in net.stays_down:
                net.placeable.discard(req.provider_id)
            if req.provider_id in net.recovers:
                net.silent_at.pop(req.provider_id, None)
                net.silenced_at.pop(req.provider_id, None)
                net.unpicked_at.pop(req.provider_id, None)

        @activity.defn(name=c.RECORD_RUN_FAILED)
        async def record_run_failed(req: c.RunFailed) -> None:
            await plain(c.RECORD_RUN_FAILED)(req)

        @activity.defn(name=c.VERIFY_JOB)
        async def verify_job(req: c.VerifyRequest) -> c.Verdict:
            net._seen(c.VERIFY_JOB, req)
            await net._maybe_block(c.VERIFY_JOB)
            net.verdicts += 1
            if net.undecided_first and net.verdicts == 1:
                return c.Verdict(False, False, "runs disagree", [], [], decided=False)
            first = c.ReplicaReport(req.attempt, req.provider_id, 0, req.exit_code,
                                    req.timed_out, 0, req.manifest, req.missing)
            return majority([first, *req.others])

        @activity.defn(name=c.PLAN_CHECK)
        async def plan_check(req: c.CheckRequest) -> c.CheckDecision:
            net._seen(c.PLAN_CHECK, req)
            return c.CheckDecision(net.run_check, "stub")

        def settled(req: c.SettleRequest) -> c.Settlement:
            lines = req.payments or []
            charged = sum(p.gpu_ms for p in lines if p.payer == "client")
            if req.payments is None and req.pay_provider:
                charged = req.gpu_ms
            return c.Settlement(charged, charged, 0, 1_000_000 - charged)

        @activity.defn(name=c.SETTLE_JOB)
        async def settle_job(req: c.SettleRequest) -> c.Settlement:
            net._seen(c.SETTLE_JOB, req)
            await net._maybe_block(c.SETTLE_JOB)
            return settled(req)

        @activity.defn(name=c.CLOSE_JOB)
        async def close_job(req: c.CloseRequest) -> c.Settlement:
            """One step; once through, its parts are recorded as the steps they stand for
            (SETTLE_JOB, RECORD_REPUTATION, RELEASE_GPUS, FINISH_JOB), so that a test says
            what was settled, blamed, released and finished however the job ended."""
            try:
                await plain(c.CLOSE_JOB)(req)
            except asyncio.CancelledError:
                if net.close_commits_anyway and net.late_ending is None:
                    net.late_ending = c.EndedJob(
                        "SUCCEEDED" if req.finish.succeeded else "FAILED", req.finish.reason)
                raise
            if req.settle is not None:
                net._seen(c.SETTLE_JOB, req.settle)
            for outcome in req.outcomes:
                net._seen(c.RECORD_REPUTATION, outcome)
            for provider_id in req.release_provider_ids:
                net._seen(c.RELEASE_GPUS, c.ReleaseRequest(req.finish.job_id, provider_id))
            net._seen(c.FINISH_JOB, req.finish)
            settlement = c.Settlement(0, 0, 0, 0) if req.settle is None else settled(req.settle)
            state = "CANCELLED" if req.finish.cancelled else (
                "SUCCEEDED" if req.finish.succeeded else "FAILED")
            ending = net.late_ending or c.EndedJob(state, req.finish.reason)
            return dataclasses.replace(settlement, ended=ending)

        @activity.defn(name=c.RECORD_REPUTATION)
        async def record_reputation(req: c.ReputationRequest) -> None:
            await plain(c.RECORD_REPUTATION)(req)

        @activity.defn(name=c.RELEASE_GPUS)
        async def release_gpus(req: c.ReleaseRequest) -> None:
            await plain(c.RELEASE_GPUS)(req)

        @activity.defn(name=c.RELEASE_RUN)
        async def release_run(req: c.ReleaseRunRequest) -> None:
            await plain(c.RELEASE_RUN)(req)

        @activity.defn(name=c.RECORD_UNPLACED)
        async def record_unplaced(req: c.UnplacedRun) -> None:
            await plain(c.RECORD_UNPLACED)(req)
            net.lost_attempts.add(req.attempt)  # any GPUs it got go back

        @activity.defn(name=c.FINISH_JOB)
        async def finish_job(req: c.FinishRequest) -> None:
            await plain(c.FINISH_JOB)(req)

        @activity.defn(name=c.PLAN_CANARY)
        async def plan_canary(req: c.CanaryRequest) -> c.CanaryPlan:
            net._seen(c.PLAN_CANARY, req)
            return c.CanaryPlan(False, "stub")

        return [admit_job, allocate_gpus, prepare_transfers, record_job_step, record_job_steps,
                mark_provider_lost, record_run_failed, verify_job, plan_check, settle_job,
                record_reputation, release_gpus, release_run, record_unplaced, finish_job,
                close_job, plan_canary]

    # A provider's side (its assignments: on the workflow's own queue, named by provider_id)

    async def _provider_side(self, name: str, provider_id: str) -> None:
        """How the provider behaves at this step: answers, stops answering, never picks the
        assignment up, or refuses it."""
        if name == c.EXECUTE_JOB and activity.info().attempt > 1:
            # As the control worker: a run that reached its provider (every stub's try
            # does) is never run there again (activities/assign.py).
            raise ApplicationError(f"provider {provider_id} was not heard past the grace",
                                   type=c.PROVIDER_SILENT, non_retryable=True)
        if self.unpicked_at.get(provider_id) == name:
            raise ApplicationError(f"{provider_id} did not pick the assignment up in 30s",
                                   type=c.NOT_PICKED_UP, non_retryable=True)
        if self.silenced_at.get(provider_id) == name:
            raise ApplicationError(f"provider {provider_id} was not heard for 10s",
                                   type=c.PROVIDER_SILENT, non_retryable=True)
        if self.silent_at.get(provider_id) == name:
            await asyncio.sleep(3600)  # no heartbeat: Temporal times the step out
        if self.slow_at.get(provider_id) == name:
            while True:
                activity.heartbeat()
                await asyncio.sleep(0.2)
        if self.spent_at.get(provider_id) == name:
            del self.spent_at[provider_id]
            raise ApplicationError(f"{provider_id}'s attempt cannot be taken over",
                                   type=c.ATTEMPT_SPENT, non_retryable=True)
        refused = self.refuses.get(provider_id)
        if refused is not None and refused[0] == name:
            raise ApplicationError(f"{provider_id} refused the {name} step", type=refused[1],
                                   non_retryable=True)
        await self._maybe_block(name, provider_id)

    def gpu(self) -> list[Callable[..., Any]]:
        net = self

        @activity.defn(name=c.STAGE_INPUTS)
        async def stage_inputs(req: c.StageRequest) -> c.StageResult:
            net._seen(c.STAGE_INPUTS, req)
            await net._provider_side(c.STAGE_INPUTS, req.provider_id)
            return c.StageResult(1, 1)

        @activity.defn(name=c.EXECUTE_JOB)
        async def execute_job(req: c.ExecuteRequest) -> c.ExecuteResult:
            net._seen(c.EXECUTE_JOB, req)
            await net._provider_side(c.EXECUTE_JOB, req.provider_id)
            if req.command == VERIFIER:
                code = net.verifier_exit
                return c.ExecuteResult(code, False, 500, 500, "rejected" if code else "fine")
            if req.provider_id in net.timeouts | net.timeouts_writing:
                return c.ExecuteResult(None, True, 60_000, 60_000, "killed at its timeout")
            code = net.exit_codes.get(req.provider_id, 0)
            return c.ExecuteResult(code, False, 1000, 1000, "ok")

        @activity.defn(name=c.UPLOAD_OUTPUTS)
        async def upload_outputs(req: c.UploadRequest) -> c.UploadResult:
            net._seen(c.UPLOAD_OUTPUTS, req)
            await net._provider_side(c.UPLOAD_OUTPUTS, req.provider_id)
            if req.provider_id in net.timeouts | net.empty:
                return c.UploadResult([], ["out.txt"])  # killed before it wrote anything
            sha = LIARS_SHA if req.provider_id in net.liars else HONEST_SHA
            sha = net.answers.get(req.provider_id, sha)
            return c.UploadResult([c.ManifestEntry("out.txt", f"k{req.attempt}", sha, 1)], [])

        return [stage_inputs, execute_job, upload_outputs]


def majority(reports: list[c.ReplicaReport]) -> c.Verdict:
    """The verdict as activities/verify.py gives it (with storage taken as honest): one run
    is judged alone; several by the majority of their endings and outputs; two that disagree
    leave it undecided (a third may decide), three with no majority fail the job and blame
    no one."""
    def outcome(r: c.ReplicaReport) -> tuple[bool, str]:
        if r.timed_out:
            return False, "timed out after 60 s"
        if r.exit_code != 0:
            return False, f"the command exited with code {r.exit_code}"
        if r.missing:
            return False, "declared outputs missing: " + ", ".join(r.missing)
        return True, "exit code 0, every output present and intact"

    if len(reports) == 1:
        succeeded, reason = outcome(reports[0])
        return c.Verdict(True, succeeded, reason, [reports[0].attempt], [])
    outputs = {r.attempt: (ending(r), *(e.digest for e in r.manifest)) for r in reports}
    top, votes = Counter(outputs.values()).most_common(1)[0]
    if votes * 2 <= len(reports):
        if len(reports) < 3:
            return c.Verdict(False, False, "runs disagree", [], [], decided=False)
        return c.Verdict(False, False, f"no majority among {len(reports)} runs", [], [])
    accepted = [r.attempt for r in reports if outputs[r.attempt] == top]
    losers = [r.attempt for r in reports if outputs[r.attempt] != top]
    winner = next(r for r in reports if r.attempt == accepted[0])
    succeeded, reason = outcome(winner)
    return c.Verdict(True, succeeded, reason, accepted, losers)


def steps(net: StubNetwork) -> list[str]:
    """The activities the workflow called, in order."""
    return [name for name, _ in net.calls]
