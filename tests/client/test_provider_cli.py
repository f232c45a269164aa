"""The CLI's provider and node commands against a stand-in API: output, --json, errors."""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from client import cli
from client.cli import common
from client.sdk import GpgpuClient
from tests.client.fake_api import CLIENT, FakeApi

runner = CliRunner(env={"COLUMNS": "200"})


def provider_json(provider_id: str = "p1") -> dict[str, Any]:
    return {
        "providerId": provider_id, "region": "eu", "status": "online", "statusReason": "",
        "lastHeartbeatAt": "2025-01-02T03:04:05+00:00", "reputation": 0.75,
        "earningsMicro": 1_500_000, "pricePerGpuHourMicro": 2_500_000,
        "gpus": [
            {"index": 0, "model": "H100", "memoryMb": 81_920, "busyJobId": None,
             "status": "online", "reason": ""},
            {"index": 1, "model": "H100", "memoryMb": 81_920, "busyJobId": None,
             "status": "degraded", "reason": "ECC errors: 2"},
        ],
        "telemetry": [{"at": "2025-01-02T03:04:05+00:00", "gpus": [
            {"index": 0, "utilizationPct": 97, "memoryUsedMb": 40_960, "temperatureC": 71,
             "powerW": 650.5, "eccErrors": 0, "xidErrors": 0},
        ]}],
    }


def refusal(field: str, message: str) -> dict[str, str]:
    return {"__typename": "FieldError", "field": field, "message": message}


@dataclass
class ProviderApi(FakeApi):
    """FakeApi plus the provider, node and queue operations."""

    provider: dict[str, Any] = field(default_factory=provider_json)
    queues: list[dict[str, Any]] = field(default_factory=lambda: [
        {"name": "default", "gpuModels": [], "waiting": 2, "priorityLevels": 1,
         "maxGpusPerClient": 0, "fairShare": True},
        {"name": "h100", "gpuModels": ["H100"], "waiting": 0, "priorityLevels": 3,
         "maxGpusPerClient": 0, "fairShare": False},
    ])
    operations: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def _graphql(self, payload: dict[str, Any]) -> httpx.Response:
        match = re.search(r"(?:query|mutation) (\w+)", payload["query"])
        name, variables = (match.group(1) if match else ""), payload.get("variables") or {}
        self.operations.append((name, variables))
        data = self._answer(name, variables)
        if isinstance(data, str):
            return httpx.Response(200, json={"data": None, "errors": [{"message": data}]})
        if data is None:
            return super()._graphql(payload)
        return httpx.Response(200, json={"data": data})

    def _answer(self, name: str, v: dict[str, Any]) -> dict[str, Any] | str | None:
        p = self.provider
        known = v.get("id") == p["providerId"]
        if name == "Providers":
            return {"providers": [p]}
        if name == "Provider":
            return {"provider": p if known else None}
        if name in ("SuspendGpu", "ResumeGpu"):
            key = "suspendGpu" if name == "SuspendGpu" else "resumeGpu"
            if not known:  # refusals the caller can mend are FieldError results
                return {key: refusal("providerId", f"no provider {v['id']!r}")}
            if v["index"] not in (0, 1):
                return {key: refusal("gpu_index", f"{v['id']} has no GPU {v['index']} "
                                     "(it has 0, 1)")}
            changed = copy.deepcopy(p)
            changed["gpus"][v["index"]]["status"] = (
                "suspended" if name == "SuspendGpu" else "online"
            )
            return {key: {"__typename": "Provider", **changed}}
        if name == "SetPrice":
            micro = int(float(v["price"]) * 1_000_000)
            return {"setPrice": {**p, "pricePerGpuHourMicro": micro}}
        if name == "ProviderEarnings":
            return {"providerEarnings": {
                "providerId": v["id"], "balanceMicro": 1_500_000, "earnedMicro": 2_000_000,
                "verifiedMicro": 1_250_000, "withdrawnMicro": 500_000,
                "entries": [{"seq": 1, "transferId": "pay:j1:p1", "amountMicro": 2_000_000,
                             "balanceMicro": 2_000_000, "counterparty": "escrow:j1",
                             "kind": "payment", "memo": "payment for GPU time",
                             "at": "2025-01-02T03:04:05+00:00"}],
            }}
        if name == "Nodes":
            return {"nodes": [{"nodeId": "local", "region": "local", "operator": "network",
                               "providerIds": ["p1"], "queues": self.queues}]}
        if name == "ConfigureQueue":
            self.queues = [q for q in self.queues if q["name"] != v["name"]] + [{
                "name": v["name"], "gpuModels": v["models"], "waiting": 0,
                "priorityLevels": v["levels"], "maxGpusPerClient": v["cap"],
                "fairShare": v["fair"],
            }]
            return {"configureQueue": {"__typename": "Node", "nodeId": v["node"]}}
        if name == "Queue":
            return {"queue": [
                {"position": 1, "jobId": "j-mine", "name": "train", "gpus": 1, "gpuModel": None,
                 "priority": 2, "waitingSince": "2025-01-02T03:04:05+00:00",
                 "expectedStart": "2025-01-02T03:04:05+00:00", "mine": True,
                 "waitingFor": ["2 jobs ahead of it in the queue"]},
                {"position": 2, "jobId": "j-other", "name": "", "gpus": 8, "gpuModel": "H100",
                 "priority": 0, "waitingSince": "2025-01-02T03:00:00+00:00",
                 "expectedStart": None, "mine": False},
            ]}
        return None


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> ProviderApi:
    api = ProviderApi()
    wired_client = functools.partial(GpgpuClient, transport=api.transport)
    monkeypatch.setattr(common, "GpgpuClient", wired_client)
    return api


def gpgpu(*args: str) -> Result:
    return runner.invoke(cli.app, ["--api", "http://api.test", "--client", CLIENT, *args])


def test_provider_status_lists_and_details(fake: ProviderApi) -> None:
    listed = gpgpu("provider", "status")
    assert listed.exit_code == 0, listed.output
    assert "p1" in listed.stdout and "2 x H100 80GB (1 degraded)" in listed.stdout
    assert "2.5" in listed.stdout

    one = gpgpu("provider", "status", "p1")
    assert one.exit_code == 0, one.output
    assert "degraded (ECC errors: 2)" in one.stdout
    assert "97%" in one.stdout and "71°C" in one.stdout and "650.5 W" in one.stdout
    assert "2.5 credits per GPU-hour" in one.stdout

    doc = json.loads(gpgpu("provider", "status", "p1", "--json", "--samples", "5").stdout)
    assert doc["gpus"][1] == {"index": 1, "model": "H100", "memory_mb": 81_920,
                              "busy_job_id": None, "status": "degraded",
                              "reason": "ECC errors: 2"}
    assert doc["telemetry"][0]["gpus"][0]["utilization_pct"] == 97
    assert fake.operations[-1] == ("Provider", {"id": "p1", "samples": 5})

    missing = gpgpu("provider", "status", "nobody")
    assert (missing.exit_code, missing.stderr) == (1, "error: provider nobody not found\n")


def test_suspend_and_resume(fake: ProviderApi) -> None:
    done = gpgpu("provider", "suspend", "p1", "0")
    assert (done.exit_code, done.stdout) == (0, "GPU 0 of p1: suspended\n")
    assert fake.operations[-1] == ("SuspendGpu", {"id": "p1", "index": 0})
    done = gpgpu("provider", "resume", "p1", "0", "--json")
    assert json.loads(done.stdout)["gpus"][0]["status"] == "online"

    bad = gpgpu("provider", "suspend", "p1", "7")
    assert (bad.exit_code, bad.stderr) == (1, "error: gpu_index: p1 has no GPU 7 (it has 0, 1)\n")
    negative = gpgpu("provider", "suspend", "p1", "-1")
    assert negative.exit_code == 2


def test_price(fake: ProviderApi) -> None:
    done = gpgpu("provider", "price", "p1", "3.25")
    assert (done.exit_code, done.stdout) == (0, "p1: 3.25 credits per GPU-hour for new jobs\n")
    assert fake.operations[-1] == ("SetPrice", {"id": "p1", "price": "3.25"})

    calls = len(fake.operations)
    plain = ': write digits, and a point and digits after it for a fraction, such as "2.5" or "0.5"'
    for price, why in [("abc", "'abc' is not a number of credits" + plain),
                       ("1_000", "'1_000' is not a number of credits" + plain),
                       ("\u0663", "'\u0663' is not a number of credits" + plain),
                       ("0", "must be more than 0 credits, got 0"),
                       ("1.0000001", "'1.0000001' has more than 6 decimal places")]:
        bad = gpgpu("provider", "price", "p1", price)
        assert (bad.exit_code, bad.stderr) == (2, f"error: price: {why}\n")
    assert len(fake.operations) == calls  # refused before any request


def test_earnings(fake: ProviderApi) -> None:
    shown = gpgpu("provider", "earnings", "p1")
    assert shown.exit_code == 0, shown.output
    assert "1.5 credits" in shown.stdout and "2 credits (also checks" in shown.stdout
    assert re.search(r"earned for verified work\s+1\.25 credits", shown.stdout), shown.stdout
    assert "payment for GPU time" in shown.stdout
    doc = json.loads(gpgpu("provider", "earnings", "p1", "--json", "--limit", "5").stdout)
    assert (doc["earned_micro"], doc["entries"][0]["kind"]) == (2_000_000, "payment")
    assert fake.operations[-1] == ("ProviderEarnings", {"id": "p1", "limit": 5})


def test_node_queues(fake: ProviderApi) -> None:
    shown = gpgpu("node", "queues")
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert re.search(r"local/default\s+any\s+1\s+no cap\s+fair share\s+2", lines[1])
    assert re.search(r"local/h100\s+H100\s+3\s+no cap\s+first come\s+0", lines[2])
    doc = json.loads(gpgpu("node", "queues", "local", "--json").stdout)
    assert [q["name"] for q in doc] == ["default", "h100"]
    missing = gpgpu("node", "queues", "mars")
    assert (missing.exit_code, missing.stderr) == (1, "error: node mars not found\n")


def test_configure_queue_changes_only_what_is_given(fake: ProviderApi) -> None:
    done = gpgpu("node", "configure-queue", "local", "h100", "--max-gpus-per-client", "4")
    assert done.exit_code == 0, done.output
    assert ("ConfigureQueue", {"node": "local", "name": "h100", "models": ["H100"], "levels": 3,
                               "cap": 4, "fair": False}) in fake.operations
    assert re.search(r"local/h100\s+H100\s+3\s+4\s+first come", done.stdout)

    done = gpgpu("node", "configure-queue", "local", "new", "--gpu-model", "L4",
                 "--gpu-model", "A10", "--fair-share")
    assert done.exit_code == 0, done.output
    assert ("ConfigureQueue", {"node": "local", "name": "new", "models": ["L4", "A10"],
                               "levels": 1, "cap": 0, "fair": True}) in fake.operations

    both = gpgpu("node", "configure-queue", "local", "x", "--gpu-model", "L4", "--any-model")
    assert (both.exit_code, both.stderr) == (
        2, "error: --gpu-model and --any-model: give one or the other\n")


def test_node_waiting(fake: ProviderApi) -> None:
    shown = gpgpu("node", "waiting", "local/h100")
    assert shown.exit_code == 0, shown.output
    assert re.search(r"1\s+j-mine\s+train\s+1\s+2\s+2025-01-02 03:04:05\s+2025-01-02 03:04:05",
                     shown.stdout)
    assert re.search(r"2\s+j-other\s+-\s+8\s+0\s+2025-01-02 03:00:00\s+-", shown.stdout)
    assert "2 jobs ahead of it" in shown.stdout
    doc = json.loads(gpgpu("node", "waiting", "local/h100", "--json").stdout)
    assert [j["position"] for j in doc] == [1, 2]
    assert fake.operations[-1] == ("Queue", {"name": "local/h100", "limit": 100})


def test_an_unreachable_api_is_one_line(dead_url: str) -> None:
    result = runner.invoke(cli.app, ["--api", dead_url, "provider", "suspend", "p1", "0"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: cannot reach the GPGPU API at {dead_url}: is `make up` running?\n"
    )


async def test_the_async_client_has_the_same_calls() -> None:
    from client.aio import AsyncGpgpuClient

    api = ProviderApi()
    async with AsyncGpgpuClient("http://api.test", CLIENT, transport=api.transport) as gp:
        provider = await gp.provider("p1", samples=3)
        assert provider.gpus[1].reason == "ECC errors: 2"
        assert provider.telemetry[0].gpus[0].power_w == 650.5
        assert (await gp.suspend_gpu("p1", 1)).gpus[1].status == "suspended"
        assert (await gp.resume_gpu("p1", 1)).gpus[1].status == "online"
        assert (await gp.set_price("p1", "4")).price_per_gpu_hour_micro == 4_000_000
        assert (await gp.provider_earnings("p1")).earned_micro == 2_000_000
        await gp.configure_queue("local", "l4", ["L4"], 2, 1, False)
        queues = {q.ref: q for n in await gp.nodes() for q in n.queues}
        assert queues["local/l4"].priority_levels == 2 and not queues["local/l4"].fair_share
        assert [j.position for j in await gp.queue("local/l4")] == [1, 2]


async def test_a_refusal_is_a_refused_error_naming_its_field_in_both_clients() -> None:
    from client.aio import AsyncGpgpuClient
    from client.errors import RefusedError

    api = ProviderApi()
    with GpgpuClient("http://api.test", CLIENT, transport=api.transport) as gp, \
            pytest.raises(RefusedError) as refused:
        gp.suspend_gpu("p1", 7)
    assert (refused.value.field, str(refused.value)) == (
        "gpu_index", "gpu_index: p1 has no GPU 7 (it has 0, 1)")
    async with AsyncGpgpuClient("http://api.test", CLIENT, transport=api.transport) as aio:
        with pytest.raises(RefusedError) as refused:
            await aio.resume_gpu("nobody", 0)
    assert (refused.value.field, refused.value.reason) == ("providerId", "no provider 'nobody'")
