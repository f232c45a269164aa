"""The domain's own check of every bound (domain/limits.py): a command one past a maximum is
refused with OutOfBounds naming the field, and stores nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from domain.application import Network
from domain.limits import (
    MAX_AMOUNT_MICRO,
    MAX_BALANCE_MICRO,
    MAX_BYTES,
    MAX_GPU_INDEX,
    MAX_GPU_MEMORY_MB,
    MAX_GPU_MS,
    MAX_PRICE_MICRO,
    MAX_PRIORITY_LEVELS,
    MAX_PROVIDER_GPUS,
    MAX_STEP_FILES,
    OutOfBounds,
)
from protocol.spec import parse_job_spec
from tests.domain.support import gpu


@pytest.fixture
def net() -> Iterator[Network]:
    network = Network(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    network.register_provider("p", "eu", 1_000_000, [gpu(0), gpu(1)])
    network.submit_job("j", "c", parse_job_spec(
        {"name": "x", "command": "true", "max_price_per_gpu_hour": "3"}))
    try:
        yield network
    finally:
        network.close()


def finished(**over: Any) -> dict[str, Any]:
    return {"provider_id": "p", "exit_code": 0, "timed_out": False, "gpu_ms": 1,
            "log_tail": "", **over}


def manifest(n: int, size: int = 1) -> dict[str, Any]:
    return {"provider_id": "p", "missing": [],
            "manifest": [{"path": f"o{i}", "size": size, "digest": "blake3:" + "0" * 64}
                         for i in range(n)]}


ATTACKS: list[tuple[str, Callable[[Network], Any]]] = [
    ("price_per_gpu_hour_micro", lambda n: n.set_price("p", MAX_PRICE_MICRO + 1)),
    ("price_per_gpu_hour_micro", lambda n: n.register_provider(
        "p2", "eu", MAX_PRICE_MICRO + 1, [gpu(0)])),
    ("gpus", lambda n: n.register_provider(
        "p2", "eu", 1, [gpu(i) for i in range(MAX_PROVIDER_GPUS + 1)])),
    ("gpus.0.index", lambda n: n.register_provider("p2", "eu", 1, [gpu(MAX_GPU_INDEX + 1)])),
    ("gpus.0.memory_mb", lambda n: n.register_provider(
        "p2", "eu", 1, [gpu(0, memory_mb=MAX_GPU_MEMORY_MB + 1)])),
    ("gpus.0.index", lambda n: n.register_provider(  # a rejoin: the same checks
        "p", "eu", 1_000_000, [gpu(2**63)])),
    ("gpu_index", lambda n: n.suspend_gpu("p", MAX_GPU_INDEX + 1)),
    ("gpu_index", lambda n: n.resume_gpu("p", MAX_GPU_INDEX + 1)),
    ("gpu_index", lambda n: n.report_gpu_health("p", 2**63, False, "ECC")),
    ("amount_micro", lambda n: n.deposit("c", MAX_AMOUNT_MICRO + 1, "d")),
    ("amount_micro", lambda n: n.withdraw("client:c", MAX_AMOUNT_MICRO + 1, "w")),
    ("priority_levels", lambda n: n.configure_queue("local", "q", [], MAX_PRIORITY_LEVELS + 1)),
    ("files", lambda n: n.record_step(
        "j", "inputs_staged", 1, {"provider_id": "p", "files": MAX_STEP_FILES + 1, "bytes": 0})),
    ("bytes", lambda n: n.record_step(
        "j", "inputs_staged", 1, {"provider_id": "p", "files": 1, "bytes": MAX_BYTES + 1})),
    ("gpu_ms", lambda n: n.record_step("j", "execution_finished", 1,
                                       finished(gpu_ms=MAX_GPU_MS + 1))),
    ("exit_code", lambda n: n.record_step("j", "execution_finished", 1,
                                          finished(exit_code=2**31))),
    ("manifest", lambda n: n.record_step("j", "outputs_uploaded", 1,
                                         manifest(MAX_STEP_FILES + 1))),
    ("manifest.0.size", lambda n: n.record_step("j", "outputs_uploaded", 1,
                                                manifest(1, size=MAX_BYTES + 1))),
    ("attempt", lambda n: n.queue_job("j", 2**63)),
]


@pytest.mark.parametrize(("field", "attack"), ATTACKS, ids=[f for f, _ in ATTACKS])
def test_one_past_a_bound_is_refused_by_field_and_stores_nothing(
    net: Network, field: str, attack: Callable[[Network], Any]
) -> None:
    before = net.recorder.max_notification_id()
    with pytest.raises(OutOfBounds) as caught:
        attack(net)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: must be")
    assert net.recorder.max_notification_id() == before


def test_a_balance_never_passes_what_the_stores_hold(net: Network) -> None:
    """Grants each within the bound, summed past a balance's: the last one is refused (the
    outside world's account, which pays every grant, reaches its bound first)."""
    grants = MAX_BALANCE_MICRO // MAX_AMOUNT_MICRO
    for n in range(grants):
        net.deposit("whale", MAX_AMOUNT_MICRO, f"g{n}")
    before = net.recorder.max_notification_id()
    with pytest.raises(OutOfBounds) as caught:
        net.deposit("whale", 1, "one-more")
    assert str(caught.value) == (f"amount_micro: would take external:deposits below "
                                 f"-{MAX_BALANCE_MICRO} micro-credits")
    assert net.recorder.max_notification_id() == before
    assert net.balance("client:whale") == MAX_BALANCE_MICRO


def test_the_bounds_themselves_are_accepted(net: Network) -> None:
    net.set_price("p", MAX_PRICE_MICRO)
    net.register_provider("p3", "eu", 1, [gpu(MAX_GPU_INDEX, memory_mb=MAX_GPU_MEMORY_MB)])
    net.deposit("c", MAX_AMOUNT_MICRO, "max")
    net.record_step("j", "execution_finished", 1, finished(gpu_ms=MAX_GPU_MS))
    assert net.provider("p").price_per_gpu_hour_micro == MAX_PRICE_MICRO
