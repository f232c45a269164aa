"""Temporal may run any activity more than once, even two copies at the same time.

Every control activity is run twice in a row, and then three times concurrently
with itself; the events recorded and the balances must be exactly those of a
run where each activity ran once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from activities.control import ControlActivities
from activities.verify import output_key
from domain.application import Network
from infra.settings import Settings
from protocol import digest
from protocol.spec import parse_job_spec
from tests.support.control import control_activities
from tests.support.stores import store_settings
from workflows import contracts as c


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    with store_settings(request.param, tmp_path) as s:
        yield s


def lifecycle(acts: ControlActivities, job_id: str, repeat: Callable[[Callable[[], Any]], Any],
              close: bool = False):
    """Drive one job through every control activity; `repeat` decides how often each runs.
    `close`: its ending in one step (close_job), not settle, reputation, release, finish."""
    net, store = acts.network, acts.store
    net.open_client("alice", 100_000_000)
    net.register_provider("p1", "local", 3_600_000, [{"index": 0, "model": "H100",
                                                      "memory_mb": 81920}])
    with acts.views.transaction() as cur:
        cur.execute("DELETE FROM provider_liveness WHERE provider_id = 'p1'")
        cur.execute("INSERT INTO provider_liveness (provider_id, last_heartbeat_at) VALUES "
                    "('p1', ?)", (time.time() + 3600,))
    spec = parse_job_spec({"name": "j", "command": "true", "outputs": ["o.txt"],
                           "max_price_per_gpu_hour": "4", "timeout": 60})
    net.submit_job(job_id, "alice", spec)
    data = b"result"
    store.put("alice", output_key(job_id, "o.txt", 1), [data], None)
    manifest = [c.ManifestEntry("o.txt", output_key(job_id, "o.txt", 1),
                                digest.of_bytes(data), len(data))]

    repeat(lambda: acts.admit_job(c.JobInput(job_id, "alice")))
    alloc = repeat(lambda: acts.allocate_gpus(c.AllocateRequest(job_id, 1)))
    repeat(lambda: acts.prepare_transfers(c.AllocateRequest(job_id, 1)))
    for step in (
        c.JobStep(job_id, "inputs_staged", "p1", 1, files=0, bytes=0),
        c.JobStep(job_id, "execution_started", "p1", 1),
        c.JobStep(job_id, "execution_finished", "p1", 1, exit_code=0, gpu_ms=30_000),
        c.JobStep(job_id, "outputs_uploaded", "p1", 1, manifest=manifest),
    ):
        repeat(partial(acts.record_job_step, step))
    verdict = repeat(lambda: acts.verify_job(c.VerifyRequest(job_id, 1, "p1", 0, False,
                                                             manifest, [])))
    assert verdict.accepted and verdict.succeeded
    settle = c.SettleRequest(job_id, "p1", 30_000, alloc.price_per_gpu_hour_micro, True)
    outcome = c.ReputationRequest(job_id, "p1", "success")
    finish = c.FinishRequest(job_id, True, "")
    if close:  # answered with the job's ending too, which settle_job does not say
        closed = repeat(lambda: acts.close_job(c.CloseRequest(settle, [outcome], ["p1"], finish)))
        assert closed.ended is not None and closed.ended.state == "SUCCEEDED", closed
        return dataclasses.replace(closed, ended=None)
    settlement = repeat(lambda: acts.settle_job(settle))
    repeat(lambda: acts.record_reputation(outcome))
    repeat(lambda: acts.release_gpus(c.ReleaseRequest(job_id, "p1")))
    repeat(lambda: acts.finish_job(finish))
    return settlement


def history(net: Network) -> list[tuple[str, str]]:
    """Every stored event as (aggregate kind, event type), in order, without ids or times."""
    out = []
    for n in net.recorder.select_notifications(start=1, limit=10_000):
        event = net.mapper.to_domain_event(n)
        kind, _, etype = type(event).__qualname__.rpartition(".")
        out.append((kind, etype))
    return out


def stable(result: Any) -> Any:
    """A result without what may rightly differ between runs: presigned URLs' expiry."""
    if isinstance(result, c.TransferPlan):
        return repr(result).split("?expires=")[0] + str(
            [(i.name, i.digest) for i in result.inputs] + [(o.path, o.key) for o in result.outputs]
        )
    return result


def once(fn: Callable[[], Any]) -> Any:
    return fn()


def twice(fn: Callable[[], Any]) -> Any:
    first = fn()
    assert stable(fn()) == stable(first)
    return first


def concurrently(fn: Callable[[], Any]) -> Any:
    with ThreadPoolExecutor(3) as pool:
        results = [f.result() for f in [pool.submit(fn) for _ in range(3)]]
    assert all(stable(r) == stable(results[0]) for r in results), results
    return results[0]


@pytest.mark.parametrize("close", [False, True], ids=["step by step", "closed in one"])
@pytest.mark.parametrize("repeat", [twice, concurrently], ids=["twice", "concurrently"])
def test_every_activity_is_idempotent(
    settings: Settings, tmp_path: Path, repeat: Callable[[Callable[[], Any]], Any], close: bool
) -> None:
    """Closed in one step, a job's events are those of its four steps one at a time."""
    baseline_settings = Settings(event_store="sqlite", home=tmp_path / "baseline")
    with control_activities(baseline_settings) as baseline, control_activities(settings) as acts:
        expected = lifecycle(baseline, "job-1", once)
        got = lifecycle(acts, "job-1", repeat, close)
        check_the_same(acts, baseline, got, expected)


def check_the_same(acts: ControlActivities, baseline: ControlActivities, got: Any,
                   expected: Any) -> None:
    assert got == expected
    assert history(acts.network) == history(baseline.network)
    for account in ("client:alice", "escrow:job-1", "provider:p1", "protocol:fees",
                    "external:deposits"):
        assert acts.network.balance(account) == baseline.network.balance(account), account
    assert acts.network.job("job-1").state == "SUCCEEDED"


def test_a_copy_of_an_allocation_that_comes_once_the_first_was_placed_takes_it(
    settings: Settings,
) -> None:
    """Three copies at once: the first is placed and takes its ticket out of line; a copy
    that read the job before that placement was saved puts a new ticket in line, for GPUs
    now held by its own job. The next round gives it the placement made, rather than
    keeping it waiting for free GPUs until it fails as NoCapacity (CI saw it)."""
    with control_activities(settings) as acts:
        net = acts.network
        net.open_client("alice", 100_000_000)
        net.register_provider("p1", "local", 3_600_000, [{"index": 0, "model": "H100",
                                                          "memory_mb": 81920}])
        with acts.views.transaction() as cur:
            cur.execute("INSERT INTO provider_liveness (provider_id, last_heartbeat_at)"
                        " VALUES ('p1', ?)", (time.time() + 3600,))
        net.submit_job("job-1", "alice", parse_job_spec({
            "name": "j", "command": "true", "max_price_per_gpu_hour": "4", "timeout": 60}))
        acts.admit_job(c.JobInput("job-1", "alice"))
        first = acts.allocate_gpus(c.AllocateRequest("job-1", 1))

        late = acts.scheduler.enqueue("job-1", 1, set())  # the late copy's ticket
        acts.scheduler.run_round()

        assert late.done.is_set() and late.decision is not None
        assert (late.decision.provider_id, late.decision.gpu_indexes) == (
            first.provider_id, first.gpu_indexes)
