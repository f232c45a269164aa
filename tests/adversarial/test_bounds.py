"""Attacks with numbers: every number that enters is refused past its bound, and one bad
number can stop neither the read model nor anyone else's heartbeats.

Against the real API (uvicorn in this process, its projection and heartbeat ingest
included) on a real Temporal dev server. Each attack asserts the refusal, naming the
field, and that nothing changed: no event in the store, no ledger entry, no new price.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from domain.application import Network
from domain.limits import (
    MAX_AMOUNT_MICRO,
    MAX_BYTES,
    MAX_GPU_INDEX,
    MAX_GPU_MEMORY_MB,
    MAX_GPU_MS,
    MAX_GPUS_PER_CLIENT,
    MAX_PRICE_MICRO,
    MAX_PRIORITY_LEVELS,
    MAX_PROVIDER_GPUS,
    MAX_TIMEOUT_S,
    OutOfBounds,
)
from protocol.limits import MAX_KEY_BYTES, MAX_PATH_BYTES, MAX_SEGMENT_BYTES
from protocol.spec import parse_job_spec
from readmodel.telemetry import GpuReading, Heartbeat
from tests.support.api_client import Api, api_in_thread
from tests.support.graphql import (
    HEARTBEAT,
    REFUSAL,
    REGISTER_PROVIDER,
    RESUME,
    SET_PRICE,
    SUBMIT,
    SUSPEND,
)

H100 = "NVIDIA H100 80GB HBM3"
RED_TEAM_PATH = "out/" + "/".join(["\U0001d552" * 63] * 15) + "/" + "\U0001d552" * 50
CONFIGURE = f"""mutation($n: String!, $l: Int!, $m: Int!) {{ configureQueue(nodeId: $n,
  name: "q", gpuModels: [], priorityLevels: $l, maxGpusPerClient: $m) {{ {REFUSAL} }} }}"""
REGISTER_NODE = f"""mutation($n: String!) {{ registerNode(nodeId: $n, region: "eu",
  operator: "alice") {{ {REFUSAL} }} }}"""


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Api]:
    # No provider here heartbeats for long: with a short interval the providers of earlier
    # tests go offline mid-test, and those events would break "no event was recorded".
    with api_in_thread(tmp_path_factory.mktemp("bounds"), temporal_server,
                       provider_heartbeat_interval_s=600.0) as api:
        yield api


def gpus(n: int, index: int = 0, memory_mb: int = 81_559) -> list[dict[str, Any]]:
    return [{"index": index + i, "model": H100, "memoryMb": memory_mb} for i in range(n)]


def register_input(provider_id: str, **over: Any) -> dict[str, Any]:
    return {"providerId": provider_id, "region": "eu", "pricePerGpuHourMicro": 2_000_000,
            "gpus": gpus(2), **over}


def last_event(api: Api) -> int:
    return int(api.services.network.recorder.max_notification_id() or 0)


def price_of(api: Api, provider_id: str) -> int:
    return int(api.provider(provider_id)["pricePerGpuHourMicro"])


def beats_of(api: Api, provider_id: str) -> int:
    rows = api.services.views.query(
        "SELECT beats FROM provider_liveness WHERE provider_id = ?", (provider_id,))
    return int(rows[0]["beats"]) if rows else 0


def set_aside_total(api: Api) -> float:
    for line in api.http.get("/metrics").text.splitlines():
        if line.startswith("gpgpu_projection_events_set_aside_total "):
            return float(line.split()[1])
    raise AssertionError("/metrics has no gpgpu_projection_events_set_aside_total")


# The attacks from the issue


def test_a_price_of_10_24_is_refused_with_a_field_error_and_no_event(api: Api) -> None:
    api.register("p-greedy")
    before = last_event(api)
    message = api.refusal(SET_PRICE, id="p-greedy", p="999999999999999999")  # ~10^24 micro
    assert message == (f"pricePerGpuHour: must be at most {MAX_PRICE_MICRO // 1_000_000} "
                       "credits, got 999999999999999999")
    huge = api.error(REGISTER_PROVIDER,
                     input=register_input("p-greedy2", pricePerGpuHourMicro=10**24))
    assert ".pricePerGpuHourMicro" in huge and "within a signed 64-bit integer" in huge, huge
    assert api.refusal(REGISTER_PROVIDER, input=register_input(
        "p-greedy2", pricePerGpuHourMicro=MAX_PRICE_MICRO + 1)) == (
        f"pricePerGpuHourMicro: must be at most {MAX_PRICE_MICRO} micro-credits")
    with pytest.raises(OutOfBounds) as caught:  # and the domain, past the API
        api.services.network.set_price("p-greedy", 10**24)
    assert caught.value.field == "price_per_gpu_hour_micro"
    assert last_event(api) == before
    assert price_of(api, "p-greedy") == 2_000_000
    assert api.services.network.provider_ids().count("p-greedy2") == 0


def test_a_heartbeat_with_gpu_index_2_63_is_refused_and_the_good_beats_are_recorded(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    for pid in ("p-honest", "p-index"):
        api.register(pid, gpus=1)
    honest, index = beats_of(api, "p-honest"), beats_of(api, "p-index")
    good = [{"index": 0, "utilization_pct": 50}]
    bad = [{"index": 2**63, "utilization_pct": 50}]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # arriving together: one batch
        answers = list(pool.map(
            lambda t: api.post(HEARTBEAT, id=t[0], t=t[1]),
            [("p-honest", good)] * 5 + [("p-index", bad)],
        ))
    assert all(a["data"]["providerHeartbeat"]["__typename"] == "HeartbeatReceived"
               for a in answers[:5]), answers
    assert answers[5]["data"]["providerHeartbeat"] == {
        "__typename": "FieldError", "field": "telemetry.0.index",
        "message": "must be at most 1023"}, answers[5]
    assert beats_of(api, "p-honest") == honest + 5
    assert beats_of(api, "p-index") == index

    # Past the API's check (a beat it let through by mistake): the batch it lands in is
    # written beat by beat, the bad one is refused by name, the good ones are recorded.
    services = api.services
    loop = services.broadcaster.loop

    async def together() -> list[BaseException | None]:
        beats = [Heartbeat("p-honest", time.time(), (GpuReading(0, 10),)) for _ in range(3)]
        beats.insert(1, Heartbeat("p-index", time.time(), (GpuReading(2**63, 10),)))
        results = await asyncio.gather(*(services.heartbeats.submit(b) for b in beats),
                                       return_exceptions=True)
        return [r if isinstance(r, BaseException) else None for r in results]

    with caplog.at_level("WARNING", logger="api.services"):
        results = asyncio.run_coroutine_threadsafe(together(), loop).result(30)
    assert "writing 4 heartbeats together failed" in caplog.text  # they were one batch
    assert [r is None for r in results] == [True, False, True, True]
    assert "the heartbeat of 'p-index' was refused" in str(results[1])
    assert beats_of(api, "p-honest") == honest + 8
    assert beats_of(api, "p-index") == index


def test_a_bad_event_in_the_store_is_set_aside_and_another_tenants_later_event_is_shown(
    api: Api,
) -> None:
    network: Network = api.services.network
    api.register("p-poison")
    aside = set_aside_total(api)
    provider = network.provider("p-poison")
    provider._price_changed(price_per_gpu_hour_micro=10**24)  # straight into the store
    network.save(provider)
    poison = last_event(api)
    api.gql(REGISTER_NODE, "alice", n="after-poison")  # another tenant's command after it
    nodes = api.gql("{ nodes { nodeId } }", "alice")["nodes"]
    assert "after-poison" in {n["nodeId"] for n in nodes}
    rows = api.services.views.query(
        "SELECT notification_id, topic, error FROM projection_set_aside"
        " WHERE notification_id = ?", (poison,))
    assert len(rows) == 1 and rows[0]["topic"].endswith("Provider.PriceChanged"), rows
    assert set_aside_total(api) == aside + 1
    assert price_of(api, "p-poison") == 2_000_000  # the view kept what it could hold


# Every other bounded number: its maximum + 1 is refused, naming the field


@pytest.mark.parametrize(("over", "message"), [
    ({"gpus": gpus(MAX_PROVIDER_GPUS + 1)}, f"gpus: must be at most {MAX_PROVIDER_GPUS} GPUs"),
    ({"gpus": gpus(1, index=MAX_GPU_INDEX + 1)},
     f"gpus.0.index: must be at most {MAX_GPU_INDEX}"),
    ({"gpus": gpus(1, memory_mb=MAX_GPU_MEMORY_MB + 1)},
     f"gpus.0.memoryMb: must be at most {MAX_GPU_MEMORY_MB} MiB"),
])
def test_register_provider_past_a_bound(api: Api, over: dict[str, Any], message: str) -> None:
    api.session("prov")  # signed up before counting: run alone, signing up is the first events
    before = last_event(api)
    assert api.refusal(REGISTER_PROVIDER, input=register_input("p-over", **over)) == message
    assert last_event(api) == before
    assert "p-over" not in api.services.network.provider_ids()


def test_set_price_one_micro_credit_past_the_bound(api: Api) -> None:
    api.register("p-price-bound")
    before = last_event(api)
    assert api.refusal(SET_PRICE, id="p-price-bound", p="1000000.000001").startswith(
        f"pricePerGpuHour: must be at most {MAX_PRICE_MICRO // 1_000_000} credits")
    assert last_event(api) == before and price_of(api, "p-price-bound") == 2_000_000
    api.gql(SET_PRICE, id="p-price-bound", p="1000000")  # the bound itself is a price
    assert price_of(api, "p-price-bound") == MAX_PRICE_MICRO


@pytest.mark.parametrize("price", ["1_000", "\u0663", " 2.5", "2.5\n", "+2.5", ".5", "1e2"])
def test_set_price_in_a_form_a_reader_could_misread(api: Api, price: str) -> None:
    api.register("p-price-form")
    before = last_event(api)
    assert api.refusal(SET_PRICE, id="p-price-form", p=price).startswith(
        f"pricePerGpuHour: {price!r} is not a number of credits: write digits")
    assert last_event(api) == before and price_of(api, "p-price-form") == 2_000_000


@pytest.mark.parametrize("mutation", [SUSPEND, RESUME])
def test_a_gpu_index_past_the_bound(api: Api, mutation: str) -> None:
    api.register("p-gpu-index")
    before = last_event(api)
    assert api.refusal(mutation, id="p-gpu-index", i=MAX_GPU_INDEX + 1) == (
        f"index: must be at most {MAX_GPU_INDEX}")
    assert last_event(api) == before


@pytest.mark.parametrize(("levels", "cap", "message"), [
    (MAX_PRIORITY_LEVELS + 1, 0, f"priorityLevels: must be at most {MAX_PRIORITY_LEVELS} levels"),
    (1, MAX_GPUS_PER_CLIENT + 1, f"maxGpusPerClient: must be at most {MAX_GPUS_PER_CLIENT} GPUs"),
])
def test_queue_configuration_past_a_bound(api: Api, levels: int, cap: int, message: str) -> None:
    api.gql(REGISTER_NODE, "alice", n="bounds-node")
    before = last_event(api)
    assert api.refusal(CONFIGURE, "alice", n="bounds-node", l=levels, m=cap) == message
    assert last_event(api) == before


@pytest.mark.parametrize(("field", "over", "message"), [
    ("resources.gpus", {"resources": {"gpus": 65}}, "less than or equal to 64"),
    ("resources.min_gpu_memory_gb", {"resources": {"min_gpu_memory_gb": 4097}},
     "less than or equal to 4096"),
    ("timeout", {"timeout": MAX_TIMEOUT_S + 1}, "must be between 1 second and 7 days"),
    ("verification.replicas", {"verification": {"replicas": 6}}, "less than or equal to 5"),
    ("priority", {"priority": 10}, "less than or equal to 9"),
    ("max_price_per_gpu_hour", {"max_price_per_gpu_hour": "1000000.000001"},
     "must be at most 1000000 credits"),
    ("inputs.0.size", {"inputs": [{"key": "a", "size": MAX_BYTES + 1}]},
     f"less than or equal to {MAX_BYTES}"),
    # The red team's long output path: its key jobs/<job>/runs/<n>/<path> was past storage's
    # bound, so no run could upload it and verification failed on the key, the workflow with
    # it, and the sweeper refunded both runs (the client read its result in the job log).
    ("outputs.0", {"outputs": [RED_TEAM_PATH]},
     f"is 3999 bytes of UTF-8, more than the {MAX_PATH_BYTES} a path may have (an output's "
     f"storage key, jobs/<job>/runs/<attempt>/<path>, is at most {MAX_KEY_BYTES})"),
    ("outputs.0", {"outputs": ["o" * 1000]}, f"more than the {MAX_PATH_BYTES} a path may have"),
    ("outputs.0", {"outputs": ["out/" + "a" * 256]},
     f"of 256 bytes of UTF-8, more than the {MAX_SEGMENT_BYTES} a file or folder name may have"),
    ("inputs.0.name", {"inputs": [{"key": "a", "name": "n" * 256}]},
     f"more than the {MAX_SEGMENT_BYTES} a file or folder name may have"),
    ("inputs.0.key", {"inputs": [{"key": "k" * 960}]},
     f"more than the {MAX_KEY_BYTES} a key may have"),
    # Money in a form Python's Decimal reads and a person may misread: 1000, 3, 2.5, 100.
    ("max_price_per_gpu_hour", {"max_price_per_gpu_hour": "1_000"}, "is not a number of credits"),
    ("max_price_per_gpu_hour", {"max_price_per_gpu_hour": "\u0663"}, "is not a number of credits"),
    ("max_price_per_gpu_hour", {"max_price_per_gpu_hour": " 2.5 "}, "is not a number of credits"),
    ("max_price_per_gpu_hour", {"max_price_per_gpu_hour": "1e2"}, "is not a number of credits"),
])
def test_a_job_spec_past_a_bound(api: Api, field: str, over: dict[str, Any], message: str) -> None:
    spec = {"name": "x", "command": "true", "max_price_per_gpu_hour": "3", **over}
    before = last_event(api)
    found = api.gql(SUBMIT, "alice", s=spec)["submitJob"]
    assert found["__typename"] == "SpecRejected"
    assert [(e["field"], message in e["message"]) for e in found["errors"]] == [(field, True)]
    assert last_event(api) == before


def test_the_heartbeats_numbers_past_their_bounds(api: Api) -> None:
    api.register("p-telemetry", gpus=1)
    beats = beats_of(api, "p-telemetry")
    for reading, message in [
        ({"index": 0, "utilization_pct": 101}, "utilization_pct: must be at most 100 %"),
        ({"index": 0, "memory_used_mb": MAX_GPU_MEMORY_MB + 1},
         f"memory_used_mb: must be at most {MAX_GPU_MEMORY_MB} MiB"),
        ({"index": 0, "ecc_errors": 10**12 + 1}, "ecc_errors: must be at most 10"),
    ]:
        assert api.refusal(HEARTBEAT, id="p-telemetry", t=[reading]).startswith(
            f"telemetry.0.{message}")
    assert beats_of(api, "p-telemetry") == beats


def test_the_domain_refuses_what_the_api_would_and_stores_nothing(api: Api) -> None:
    """Commands called past the API (a control step, an operator tool): the same bounds."""
    network: Network = api.services.network
    api.register("p-domain")
    network.submit_job("j-domain", "c-domain", parse_job_spec(
        {"name": "x", "command": "true", "max_price_per_gpu_hour": "3"}))
    before = last_event(api)
    ledger = api.services.views.query("SELECT COUNT(*) AS n FROM ledger_entries")[0]["n"]
    finished = {"provider_id": "p-domain", "exit_code": 0, "timed_out": False,
                "gpu_ms": MAX_GPU_MS + 1, "log_tail": ""}
    attacks: list[tuple[str, Callable[[], Any]]] = [
        ("amount_micro", lambda: network.deposit("rich", MAX_AMOUNT_MICRO + 1, "d-over")),
        ("gpus.0.index", lambda: network.register_provider(
            "p-domain2", "eu", 1, [{"index": 2**63, "model": H100, "memory_mb": 1}])),
        ("gpu_index", lambda: network.suspend_gpu("p-domain", 2**63)),
        ("max_gpus_per_client", lambda: network.configure_queue(
            "local", "q2", [], 1, MAX_GPUS_PER_CLIENT + 1)),
        ("gpu_ms", lambda: network.record_step("j-domain", "execution_finished", 1, finished)),
    ]
    for field, attack in attacks:
        with pytest.raises(OutOfBounds) as caught:
            attack()
        assert caught.value.field == field
    assert last_event(api) == before
    assert api.services.views.query(
        "SELECT COUNT(*) AS n FROM ledger_entries")[0]["n"] == ledger
