"""Shared helpers for the domain tests: specs, GPUs, a whole job lifecycle, the event log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from domain.application import Network
from domain.job import Job
from domain.provider import Provider
from protocol.spec import JobSpec, parse_job_spec

# The stores live in tests/support/stores.py; these names stay for older imports.
from tests.support.stores import STORES as STORES
from tests.support.stores import postgres_unreachable as postgres_unreachable
from tests.support.stores import store_settings as store_settings

START = 100_000_000  # the client's starting balance, 100 credits
FEE_BPS = 500
H100 = "NVIDIA H100 80GB HBM3"

# The lifecycle's figures, worked out by hand:
#   spec: 1 GPU, timeout 1h, max 2 credits/GPU-hour -> escrow 2_000_000
#   provider price 1 credit/GPU-hour, 1_234_567 GPU-ms
#   charged = ceil(1_234_567 * 1_000_000 / 3_600_000) = ceil(342_935.27...) = 342_936
#   fee = floor(342_936 * 500 / 10_000) = floor(17_146.8) = 17_146
#   provider paid = 342_936 - 17_146 = 325_790; refund = 2_000_000 - 342_936 = 1_657_064
MAX_COST = 2_000_000
PRICE = 1_000_000
GPU_MS = 1_234_567
CHARGED = 342_936
FEE = 17_146
PAID = 325_790
REFUND = 1_657_064

JOB_EVENTS_SUCCESS = [
    "JobSubmitted",
    "FundsEscrowed",
    "JobQueued",
    "GpusAllocated",
    "InputsStaged",
    "ExecutionStarted",
    "ExecutionFinished",
    "OutputsUploaded",
    "JobVerified",
    "JobSettled",
    # The provider's side, shown on the job's own stream too (README step 8).
    "ReputationRecorded",
    "GpusReleased",
    "JobSucceeded",
]


def gpu(index: int, model: str = H100, memory_mb: int = 81_559) -> dict[str, Any]:
    return {"index": index, "model": model, "memory_mb": memory_mb}


def make_spec(**overrides: Any) -> JobSpec:
    data: dict[str, Any] = {
        "name": "train",
        "command": "python train.py",
        "max_price_per_gpu_hour": "2",
        "timeout": "1h",
    }
    data.update(overrides)
    return parse_job_spec(data)


def event_type(event: Any) -> str:
    return type(event).__qualname__.rpartition(".")[2]


def all_events(app: Network) -> list[Any]:
    """Every domain event in the application's notification log, in log order."""
    notifications = app.recorder.select_notifications(start=1, limit=100_000)
    return [app.mapper.to_domain_event(n) for n in notifications]


def notification_count(app: Network) -> int:
    return len(app.recorder.select_notifications(start=1, limit=100_000))


def notification_ids(app: Network) -> list[int]:
    return [n.id for n in app.recorder.select_notifications(start=1, limit=100_000)]


def events_of(app: Network, originator_id: UUID) -> list[Any]:
    return [e for e in all_events(app) if e.originator_id == originator_id]


def job_event_types(app: Network, job_id: str) -> list[str]:
    return [event_type(e) for e in events_of(app, Job.create_id(job_id=job_id))]


def provider_event_types(app: Network, provider_id: str) -> list[str]:
    return [event_type(e) for e in events_of(app, Provider.create_id(provider_id=provider_id))]


def account_names(app: Network) -> list[str]:
    """Every account ever opened, read from the log."""
    return [e.name for e in all_events(app) if type(e).__qualname__ == "Account.AccountOpened"]


def step_data(step: str, provider_id: str, gpu_ms: int = GPU_MS) -> dict[str, Any]:
    data: dict[str, dict[str, Any]] = {
        "inputs_staged": {"provider_id": provider_id, "files": 2, "bytes": 2048},
        "execution_started": {"provider_id": provider_id},
        "execution_finished": {
            "provider_id": provider_id,
            "exit_code": 0,
            "timed_out": False,
            "gpu_ms": gpu_ms,
            "log_tail": "done\n",
        },
        "outputs_uploaded": {
            "provider_id": provider_id,
            "manifest": [{"path": "out/model.bin", "size": 3, "digest": "blake3:" + "ab" * 32}],
            "missing": [],
        },
    }
    return data[step]


STEPS = ("inputs_staged", "execution_started", "execution_finished", "outputs_uploaded")


@dataclass(frozen=True)
class Names:
    job: str = "job-1"
    client: str = "alice"
    provider: str = "prov-1"


def lifecycle_commands(
    app: Network, names: Names | None = None, succeed: bool = True
) -> list[tuple[str, Callable[[], Any]]]:
    """The commands a successful (or failed-verification) job goes through, in order."""
    names = names or Names()
    job, client, prov = names.job, names.client, names.provider
    commands: list[tuple[str, Callable[[], Any]]] = [
        ("open_client", lambda: app.open_client(client, START)),
        ("submit_job", lambda: app.submit_job(job, client, make_spec())),
        ("admit_job", lambda: app.admit_job(job)),
        ("register_provider", lambda: app.register_provider(prov, "eu-west", PRICE, [gpu(0)])),
        ("allocate", lambda: app.allocate(job, 1, set(), {prov})),
    ]

    def record(step: str) -> Callable[[], None]:
        return lambda: app.record_step(job, step, 1, step_data(step, prov))

    commands += [(step, record(step)) for step in STEPS]
    if succeed:
        commands += [
            ("record_verdict", lambda: app.record_verdict(job, True, True, "outputs verified")),
            ("settle", lambda: app.settle(job, prov, GPU_MS, PRICE, True, FEE_BPS)),
            ("record_reputation", lambda: app.record_reputation(job, prov, "success")),
            ("release_gpus", lambda: app.release_gpus(job, prov)),
            ("finish_job", lambda: app.finish_job(job, True, "")),
        ]
    else:
        commands += [
            ("record_verdict", lambda: app.record_verdict(job, False, False, "hash mismatch")),
            ("settle", lambda: app.settle(job, prov, GPU_MS, PRICE, False, FEE_BPS)),
            ("record_reputation", lambda: app.record_reputation(job, prov, "mismatch")),
            ("release_gpus", lambda: app.release_gpus(job, prov)),
            ("finish_job", lambda: app.finish_job(job, False, "hash mismatch")),
        ]
    return commands


def run_lifecycle(app: Network, names: Names | None = None, succeed: bool = True) -> dict[str, Any]:
    """Run every lifecycle command once; returns each command's result by name."""
    return {name: command() for name, command in lifecycle_commands(app, names, succeed)}

