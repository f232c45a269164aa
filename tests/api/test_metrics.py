"""`/metrics` of the real API app: jobs, queues, waits, providers, GPU time and money,
read from the projected views after a few jobs went through the domain."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.services import Services
from infra.settings import Settings
from ops.launch import free_port
from protocol.spec import parse_job_spec
from tests.support.api_server import running_api

H100 = "NVIDIA H100 80GB HBM3"
PRICE = 2_000_000  # micro-credits per GPU-hour
MAX_COST = 5_000_000  # 1 GPU x 2 h x 2.5 credits
WAITED_S = 0.4


def spec(name: str, timeout: str = "2h", price: str = "2.5") -> object:
    return parse_job_spec({"name": name, "command": "true", "resources": {"gpus": 1},
                           "max_price_per_gpu_hour": price, "timeout": timeout})


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[str]:
    port = free_port()
    settings = Settings(
        home=Path(tmp_path_factory.mktemp("metrics")), temporal_address=temporal_server,
        event_store="memory", provider_heartbeat_interval_s=60.0,  # nobody goes offline by itself
        api_port=port, api_url=f"http://127.0.0.1:{port}",
    )
    with running_api(settings) as app:
        services: Services = app.state.services
        net = services.network
        gpus = [{"index": i, "model": H100, "memory_mb": 81_559} for i in range(2)]
        net.register_provider("p1", "eu", PRICE, gpus)
        net.register_provider("p2", "eu", PRICE, gpus)
        net.provider_offline("p2", "unplugged")
        net.open_client("alice", 100_000_000)

        # a: waits WAITED_S in the queue, runs one GPU-hour, succeeds and is settled.
        net.submit_job("a", "alice", spec("a"))  # type: ignore[arg-type]
        net.admit_job("a")
        time.sleep(WAITED_S)
        alloc = net.allocate("a", 1, set(), {"p1"})
        assert alloc.provider_id == "p1"
        net.record_step("a", "execution_started", 1, {"provider_id": "p1"})
        net.record_step("a", "execution_finished", 1, {
            "provider_id": "p1", "exit_code": 0, "timed_out": False, "gpu_ms": 3_600_000,
            "log_tail": "",
        })
        net.record_verdict("a", True, True, "")
        net.settle("a", "p1", 3_600_000, PRICE, True, 500)
        net.release_gpus("a", "p1")
        net.finish_job("a", True, "")
        # b: waits in the queue; d: holds one of p1's GPUs, running.
        net.submit_job("b", "alice", spec("b"))  # type: ignore[arg-type]
        net.admit_job("b")
        net.submit_job("d", "alice", spec("d"))  # type: ignore[arg-type]
        net.admit_job("d")
        assert net.allocate("d", 1, set(), {"p1"}).provider_id == "p1"
        net.record_step("d", "execution_started", 1, {"provider_id": "p1"})
        # c: beyond the balance, rejected.
        net.submit_job("c", "alice", spec("c", timeout="7d", price="1000"))  # type: ignore[arg-type]
        assert not net.admit_job("c").admitted

        deadline = time.monotonic() + 30
        target = net.recorder.max_notification_id()
        while services.projector.position() < (target or 0):
            assert time.monotonic() < deadline, "the projection did not catch up"
            time.sleep(0.05)
        response = httpx.get(f"{settings.api_url}/metrics", timeout=30)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        yield response.text


def value(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels} in /metrics")


def test_jobs_by_state_and_queue(scraped: str) -> None:
    assert value(scraped, "gpgpu_jobs", state="SUCCEEDED") == 1
    assert value(scraped, "gpgpu_jobs", state="QUEUED") == 1
    assert value(scraped, "gpgpu_jobs", state="RUNNING") == 1
    assert value(scraped, "gpgpu_jobs", state="REJECTED") == 1
    assert value(scraped, "gpgpu_jobs", state="FAILED") == 0  # every state, even when none
    assert value(scraped, "gpgpu_queue_depth", queue="local/default") == 1
    assert 0 <= value(scraped, "gpgpu_queue_oldest_wait_seconds", queue="local/default") < 120


def test_queue_wait_and_allocation_latency(scraped: str) -> None:
    # a waited WAITED_S between submission and its GPUs; d was placed at once.
    assert value(scraped, "gpgpu_queue_wait_seconds_count") == 2
    assert value(scraped, "gpgpu_queue_wait_seconds_bucket", le="+Inf") == 2
    assert value(scraped, "gpgpu_queue_wait_seconds_bucket", le="0.25") <= 1
    assert WAITED_S <= value(scraped, "gpgpu_queue_wait_seconds_sum") < 60
    assert value(scraped, "gpgpu_allocation_latency_seconds_count") == 2
    assert WAITED_S <= value(scraped, "gpgpu_allocation_latency_seconds_sum") < 60


def test_providers_and_gpus(scraped: str) -> None:
    assert value(scraped, "gpgpu_providers", status="online") == 1
    assert value(scraped, "gpgpu_providers", status="offline") == 1
    assert value(scraped, "gpgpu_providers", status="lost") == 0
    assert value(scraped, "gpgpu_gpus", state="busy") == 1  # d's
    assert value(scraped, "gpgpu_gpus", state="idle") == 1
    assert value(scraped, "gpgpu_gpus", state="offline") == 2  # p2's


def test_gpu_time_and_money(scraped: str) -> None:
    assert value(scraped, "gpgpu_gpu_seconds_executed_total") == 3600
    assert value(scraped, "gpgpu_gpu_seconds_sold_total") == 3600
    assert value(scraped, "gpgpu_jobs_settled_total") == 1
    charged = PRICE  # one GPU-hour
    fee = charged * 500 // 10_000
    assert value(scraped, "gpgpu_charged_micro_total") == charged
    assert value(scraped, "gpgpu_ledger_micro_total", kind="payment") == charged - fee
    assert value(scraped, "gpgpu_ledger_micro_total", kind="fee") == fee
    assert value(scraped, "gpgpu_ledger_micro_total", kind="refund") == MAX_COST - charged
    assert value(scraped, "gpgpu_ledger_micro_total", kind="escrow") == 3 * MAX_COST
    assert value(scraped, "gpgpu_balance_micro", account="escrow") == 2 * MAX_COST  # b, d
    assert value(scraped, "gpgpu_balance_micro", account="provider") == charged - fee
    assert value(scraped, "gpgpu_balance_micro", account="protocol:fees") == fee
    assert value(scraped, "gpgpu_balance_micro", account="client") == (
        100_000_000 - charged - 2 * MAX_COST
    )


def test_process_metrics_follow(scraped: str) -> None:
    assert "process_cpu_seconds_total" in scraped or "python_info" in scraped


def test_a_metrics_token_closes_the_endpoint_to_everyone_without_it(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    from readmodel.schema import ViewDB

    settings = Settings(home=tmp_path, event_store="memory", metrics_token="scrape-me")
    app = create_app(settings)
    views = ViewDB(settings)
    app.state.services = SimpleNamespace(settings=settings, views=views)  # no lifespan needed
    try:
        http = TestClient(app)
        for headers in ({}, {"Authorization": "Bearer not-it"}, {"Authorization": "scrape-me"}):
            refused = http.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.text == "metrics: send Authorization: Bearer <GPGPU_METRICS_TOKEN>\n"
            assert refused.headers["www-authenticate"] == "Bearer"
        scraped = http.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert scraped.status_code == 200
        assert value(scraped.text, "gpgpu_jobs", state="RUNNING") == 0
    finally:
        views.close()
