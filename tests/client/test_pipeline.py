from __future__ import annotations

from typing import Any

import pytest

from client.models import JobEvent
from client.pipeline import STEPS, Pipeline, StepState
from client.render import credits, event_summary, human_bytes
from tests.client.fake_api import event_json, happy_events

P, A, D, F, S = (
    StepState.PENDING,
    StepState.ACTIVE,
    StepState.DONE,
    StepState.FAILED,
    StepState.SKIPPED,
)


def ev(seq: int, type_: str, **data: Any) -> JobEvent:
    return JobEvent.from_json(event_json(seq, type_, **data))


def states(p: Pipeline) -> list[StepState]:
    return [p.state(n) for n in STEPS]


def test_each_event_moves_the_step_it_is_about() -> None:
    p = Pipeline()
    seen = []
    for raw in happy_events():
        p.apply(JobEvent.from_json(raw))
        seen.append((raw["type"], states(p)))

    assert seen == [
        ("JobSubmitted", [A, P, P, P, P, P, P]),
        ("FundsEscrowed", [A, P, P, P, P, P, P]),
        ("JobQueued", [D, A, P, P, P, P, P]),
        ("GpusAllocated", [D, D, A, P, P, P, P]),
        ("InputsStaged", [D, D, D, A, P, P, P]),
        ("ExecutionStarted", [D, D, D, A, P, P, P]),
        ("ExecutionFinished", [D, D, D, D, A, P, P]),
        ("OutputsUploaded", [D, D, D, D, D, A, P]),
        ("JobVerified", [D, D, D, D, D, D, A]),
        ("JobSettled", [D, D, D, D, D, D, D]),
        ("JobSucceeded", [D, D, D, D, D, D, D]),
    ]
    assert p.outcome == "SUCCEEDED"
    assert p.provider_id == "prov-a"
    assert p.last_seq == 11
    assert p.steps["allocate"].detail == "provider prov-a, GPUs 0 at 2 credits/GPU-hour"
    assert p.steps["settle"].detail == (
        "charged 0.000834, provider paid 0.000793, fee 0.000041, refunded 12.499166"
    )


def test_queue_position_shows_while_allocating() -> None:
    p = Pipeline()
    p.apply(ev(1, "JobQueued", position=3))
    assert p.steps["allocate"].detail == "queued, position 3"
    p.set_queue_position(1)
    assert p.steps["allocate"].detail == "queued, position 1"


def replay(p: Pipeline, history: list[tuple[str, dict[str, Any]]]) -> None:
    for seq, (type_, data) in enumerate(history, start=1):
        p.apply(ev(seq, type_, **data))


def test_a_lost_provider_sends_the_job_back_to_allocation() -> None:
    p = Pipeline()
    replay(
        p,
        [
            ("JobQueued", {}),
            ("GpusAllocated", {"provider_id": "prov-a", "attempt": 1}),
            ("InputsStaged", {"files": 1, "bytes": 10}),
            ("ExecutionStarted", {}),
            ("ProviderLost", {"provider_id": "prov-a", "reason": "heartbeat timeout"}),
        ],
    )

    assert states(p) == [D, A, P, P, P, P, P]
    assert p.provider_id is None
    assert p.notes == ["provider prov-a lost: heartbeat timeout; re-allocating"]

    p.apply(ev(6, "GpusAllocated", provider_id="prov-b", gpu_indexes=[1], attempt=2))
    assert states(p) == [D, D, A, P, P, P, P]
    assert p.provider_id == "prov-b"
    assert p.steps["allocate"].detail.endswith("(attempt 2)")


def test_a_failed_run_marks_the_failing_step_and_skips_the_rest() -> None:
    p = Pipeline()
    settled = {"charged_micro": 1, "provider_paid_micro": 1, "fee_micro": 0, "refunded_micro": 9}
    replay(
        p,
        [
            ("JobQueued", {}),
            ("GpusAllocated", {"provider_id": "prov-a"}),
            ("InputsStaged", {}),
            ("ExecutionFinished", {"exit_code": 3, "timed_out": False, "gpu_ms": 200}),
            ("JobSettled", settled),
            ("JobFailed", {"reason": "exit code 3"}),
        ],
    )

    assert states(p) == [D, D, D, F, S, S, D]
    assert p.outcome == "FAILED" and p.reason == "exit code 3"
    assert p.steps["execute"].detail == "exit code 3, 0.2 GPU-seconds"


def test_verification_failure() -> None:
    p = Pipeline()
    for i, t in enumerate(
        [
            "JobQueued",
            "GpusAllocated",
            "InputsStaged",
            "ExecutionStarted",
            "ExecutionFinished",
            "OutputsUploaded",
        ],
        start=1,
    ):
        p.apply(ev(i, t, exit_code=0))
    p.apply(ev(7, "VerificationFailed", reason="missing output out/result.txt"))
    p.apply(ev(8, "JobSettled"))
    p.apply(ev(9, "JobFailed", reason="verification failed"))
    assert states(p) == [D, D, D, D, D, F, D]
    assert p.steps["verify"].detail == "missing output out/result.txt"


def test_rejection_at_admission() -> None:
    p = Pipeline()
    p.apply(ev(1, "JobSubmitted"))
    p.apply(ev(2, "JobRejected", reason="balance 1 is below the maximum cost 12.5"))
    assert states(p) == [F, S, S, S, S, S, S]
    assert p.outcome == "REJECTED"
    assert p.steps["admit"].detail == "balance 1 is below the maximum cost 12.5"


def test_a_queue_wait_that_never_ends_in_allocation_fails_there() -> None:
    p = Pipeline()
    p.apply(ev(1, "JobQueued"))
    p.apply(ev(2, "JobFailed", reason="no provider after 3 attempts"))
    assert states(p) == [D, F, S, S, S, S, S]


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (0, "0"),
        (1, "0.000001"),
        (2_500_000, "2.5"),
        (12_499_166, "12.499166"),
        (-1_500_000, "-1.5"),
        (None, "-"),
    ],
)
def test_micro_credits_render_exactly(micro: int | None, text: str) -> None:
    assert credits(micro) == text


def test_event_summaries() -> None:
    assert event_summary(ev(1, "InputsStaged", files=2, bytes=2048)) == "2 files, 2.0 KB"
    assert event_summary(ev(1, "ExecutionFinished", exit_code=0, timed_out=True, gpu_ms=1)) == (
        "exit code 0, timed out, 0.0 GPU-seconds"
    )
    assert event_summary(ev(1, "OutputsUploaded", manifest=[{}], missing=["b.txt"])) == (
        "1 output; missing: b.txt"
    )
    assert event_summary(ev(1, "SomethingNew", colour="red", empty="")) == "colour=red"
    assert human_bytes(5) == "5 B"
    assert human_bytes(3 * 1024 * 1024) == "3.0 MB"
