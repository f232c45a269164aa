"""300 settlements and refunds at once (each submitted twice, on 8 threads), each retried as
Temporal would: the ledger holds. (Hundreds of the saves conflict and are tried again.)"""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from domain.application import Network, SettlementFigures
from domain.ledger import EXTERNAL, FEES
from infra.settings import Settings
from protocol.spec import parse_job_spec
from readmodel.schema import ViewDB
from tests.support.stores import store_settings

JOBS = 300
CLIENTS = 10
FEE_BPS = 500
PRICE = 3_600_000  # 1 micro-credit per GPU-millisecond


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    with store_settings(request.param, tmp_path) as s:
        yield s


def test_concurrent_settlements_with_retries_keep_the_ledger_whole(settings: Settings) -> None:
    app = Network(env=settings.eventsourcing_env())
    rng = random.Random(7)
    spec = parse_job_spec({"name": "j", "command": "true", "max_price_per_gpu_hour": "3.6",
                           "timeout": 60})  # escrow 60,000 micro-credits each
    for n in range(CLIENTS):
        app.open_client(f"c{n}", 1_000_000_000)
    plan = []
    for n in range(JOBS):
        job_id, client = f"job-{n}", f"c{n % CLIENTS}"
        app.submit_job(job_id, client, spec)
        assert app.admit_job(job_id).admitted
        pay = rng.random() < 0.5  # half are paid for GPU time, half refunded in full
        plan.append((job_id, client, f"p{n % 7}", rng.randrange(0, 90_000), pay))

    def settle(job: tuple[str, str, str, int, bool]) -> SettlementFigures:
        job_id, _, provider, gpu_ms, pay = job
        first = app.settle(job_id, provider, gpu_ms, PRICE, pay, FEE_BPS)
        # Injected retries: the worker "died" after saving, so Temporal runs it again.
        for _ in range(rng.randrange(0, 3)):
            assert app.settle(job_id, provider, gpu_ms, PRICE, pay, FEE_BPS) == first
        return first

    # Every settlement is submitted twice, so two copies also race each other.
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(settle, plan + plan))
    figures = dict(zip([p[0] for p in plan + plan], results, strict=True))

    held = spec.max_cost_micro
    charged_by_client: dict[str, int] = {}
    paid_by_provider: dict[str, int] = {}
    fees = 0
    for job_id, client, provider, gpu_ms, pay in plan:
        f = figures[job_id]
        expected_charge = min(gpu_ms, held) if pay else 0
        assert f.charged_micro == expected_charge
        assert f.charged_micro + f.refunded_micro == held
        assert f.provider_paid_micro + f.fee_micro == f.charged_micro
        assert app.balance(f"escrow:{job_id}") == 0
        charged_by_client[client] = charged_by_client.get(client, 0) + f.charged_micro
        paid_by_provider[provider] = paid_by_provider.get(provider, 0) + f.provider_paid_micro
        fees += f.fee_micro
    for client, charged in charged_by_client.items():
        assert app.balance(f"client:{client}") == 1_000_000_000 - charged
    for provider, paid in paid_by_provider.items():
        assert app.balance(f"provider:{provider}") == paid
    assert app.balance(FEES) == fees

    names = [str(r["name"]) for r in _accounts(app, settings)]
    assert sum(app.balance(n) for n in names) == 0
    assert app.balance(EXTERNAL) == -CLIENTS * 1_000_000_000


def _accounts(app: Network, settings: Settings) -> list[dict[str, object]]:
    """Every account that exists, from the projection of the log."""
    from readmodel.projector import Projector

    views = ViewDB(settings)
    Projector(app, views).catch_up()
    return views.query("SELECT name FROM accounts")
