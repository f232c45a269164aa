"""What a provider's agent calls - registerProvider, providerHeartbeat, drainProvider -
through the real API (api/features/agents.py): each refusal the agent can mend is a
FieldError naming the input field, and changes nothing; a provider that is not the caller's
stays a GraphQL error; the agent's own client (worker_gpu/api_client.py) reads the refusal
as ApiRejected "field: message"."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from domain.limits import MAX_GPU_MEMORY_MB, MAX_PRICE_MICRO
from tests.support.api_client import PASSWORD, Api, api_in_thread
from tests.support.graphql import DRAIN, HEARTBEAT, REGISTER_PROVIDER, SIGN_UP, accepted
from worker_gpu.api_client import ApiRejected, ProviderApi
from worker_gpu.discovery import GpuTelemetry

H100 = "NVIDIA H100 80GB HBM3"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Api]:
    with api_in_thread(tmp_path_factory.mktemp("agents"), temporal_server,
                       provider_heartbeat_interval_s=600.0) as api:  # none goes offline
        yield api


def registration(provider_id: str, **over: Any) -> dict[str, Any]:
    return {"providerId": provider_id, "region": "eu", "pricePerGpuHourMicro": 2_000_000,
            "gpus": [{"index": i, "model": H100, "memoryMb": 81_559} for i in range(2)],
            **over}


def refusal(api: Api, query: str, caller: str = "prov", **variables: Any) -> dict[str, str]:
    (answer,) = api.gql(query, caller, **variables).values()
    assert answer["__typename"] == "FieldError", answer
    return {"field": answer["field"], "message": answer["message"]}


def last_event(api: Api) -> int:
    return int(api.services.network.recorder.max_notification_id() or 0)


def shown(api: Api, provider_id: str, want: str = "offline") -> tuple[str, str]:
    """The provider's status and reason in the read model, once it shows `want` (a change
    is projected a moment after it is recorded), or as it is after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        found = api.provider(provider_id)
        if found["status"] == want or time.monotonic() > deadline:
            return found["status"], found["statusReason"]
        time.sleep(0.05)


def other_provider_account(api: Api) -> str:
    """An account of the provider role other than "prov" (api_client signs up "prov" only)."""
    if "other" not in api.sessions:
        r = api.http.post("/graphql", json={"query": SIGN_UP, "variables": {
            "e": "other@api.test", "p": PASSWORD, "r": ["provider"]}})
        found = accepted(r.json()["data"]["signUp"])
        api.sessions["other"] = {"token": found["token"], **found["user"]}
    return "other"


@pytest.mark.parametrize(("over", "field", "message"), [
    ({"providerId": "-starts-with-a-dash"}, "providerId",
     "must be 1-63 letters, digits, '.', '_' or '-'"),
    ({"providerId": "x" * 64}, "providerId", "must be 1-63 letters, digits, '.', '_' or '-'"),
    ({"pricePerGpuHourMicro": 0}, "pricePerGpuHourMicro", "must be more than 0"),
    ({"pricePerGpuHourMicro": MAX_PRICE_MICRO + 1}, "pricePerGpuHourMicro",
     f"must be at most {MAX_PRICE_MICRO} micro-credits"),
    ({"gpus": []}, "gpus", "a provider declares at least one GPU"),
    ({"gpus": [{"index": 0, "model": H100, "memoryMb": 1}] * 2}, "gpus",
     "two GPUs have the same index"),
    ({"gpus": [{"index": 0, "model": H100, "memoryMb": 1},
               {"index": 1, "model": H100, "memoryMb": MAX_GPU_MEMORY_MB + 1}]},
     "gpus.1.memoryMb", f"must be at most {MAX_GPU_MEMORY_MB} MiB"),
    ({"runtimes": ["chroot"]}, "runtimes", "each one of process, docker"),
    ({"sandbox": "chroot"}, "sandbox", "one of bwrap, bwrap-rlimits, docker, none"),
    ({"node": "nowhere"}, "node", "no node 'nowhere'"),
])
def test_a_registration_refused_names_its_field_and_records_nothing(
    api: Api, over: dict[str, Any], field: str, message: str
) -> None:
    api.session("prov")  # signed up before counting
    before = last_event(api)
    provider_id = over.get("providerId", "p-refused")
    answer = refusal(api, REGISTER_PROVIDER, input=registration("p-refused", **over))
    assert answer == {"field": field, "message": message}
    assert last_event(api) == before
    assert provider_id not in api.services.network.provider_ids()
    assert api.services.identity.owner_of("provider", provider_id) is None  # not claimed


def test_the_first_problem_of_several_is_the_one_named(api: Api) -> None:
    answer = refusal(api, REGISTER_PROVIDER, input=registration(
        "p-many", pricePerGpuHourMicro=0, sandbox="chroot"))
    assert answer["field"] == "pricePerGpuHourMicro", answer


def test_an_id_of_another_account_is_no_refusal_to_mend_but_an_error(api: Api) -> None:
    api.register("p-taken")
    other = other_provider_account(api)
    before = last_event(api)
    body = api.post(REGISTER_PROVIDER, other, input=registration("p-taken"))
    assert body["errors"][0]["message"] == "providerId: 'p-taken' belongs to another account"
    assert body["data"] is None
    assert last_event(api) == before


@pytest.mark.parametrize(("telemetry", "field", "message"), [
    ({"index": 0}, "telemetry", "must be a list of GPU readings"),
    (["gpu 0"], "telemetry.0", "must be an object"),
    ([{"index": 0}, {"index": -1}], "telemetry.1.index", "must be at least 0"),
    ([{"index": 0, "utilization_pct": 101}], "telemetry.0.utilization_pct",
     "must be at most 100 % (or null)"),
    ([{"index": 0}, {"index": 0}], "telemetry", "two readings for the same GPU index"),
])
def test_a_heartbeat_refused_names_its_field_and_is_not_counted(
    api: Api, telemetry: Any, field: str, message: str
) -> None:
    api.register("p-beats", gpus=1)

    def beats() -> int:
        rows = api.services.views.query(
            "SELECT beats FROM provider_liveness WHERE provider_id = 'p-beats'")
        return int(rows[0]["beats"])

    before = beats()
    assert refusal(api, HEARTBEAT, id="p-beats", t=telemetry) == {"field": field,
                                                                  "message": message}
    assert beats() == before
    taken = api.gql(HEARTBEAT, id="p-beats", t=[{"index": 0, "utilization_pct": 50}])
    assert taken["providerHeartbeat"] == {"__typename": "HeartbeatReceived",
                                          "providerId": "p-beats"}
    assert beats() == before + 1


def test_a_provider_not_registered_is_refused_on_provider_id(api: Api) -> None:
    """An admin may beat for or drain any id: one that was never registered is a FieldError
    on providerId; for anyone else it is not theirs, a GraphQL error."""
    api.session("admin")  # made before counting: accounts are events too
    before = last_event(api)
    assert refusal(api, HEARTBEAT, "admin", id="p-nobody", t=[]) == {
        "field": "providerId", "message": "no provider 'p-nobody'; register first"}
    assert refusal(api, DRAIN, "admin", id="p-nobody") == {
        "field": "providerId", "message": "no provider 'p-nobody'"}
    assert last_event(api) == before
    for query in (HEARTBEAT, DRAIN):
        body = api.post(query, "prov", id="p-nobody", t=[])
        assert body["errors"][0]["message"] == "forbidden: provider 'p-nobody' is not one of yours"


def test_another_accounts_provider_is_an_error_not_a_refusal(api: Api) -> None:
    api.register("p-mine", gpus=1)
    other = other_provider_account(api)  # signed up before counting
    before = last_event(api)
    for query in (HEARTBEAT, DRAIN):
        body = api.post(query, other, id="p-mine", t=[])
        assert body["errors"][0]["message"] == "forbidden: provider 'p-mine' is not one of yours"
        assert body["data"] is None
    assert last_event(api) == before
    assert api.provider("p-mine")["status"] == "online"


def test_a_drain_answers_the_provider_drained_and_it_goes_offline(api: Api) -> None:
    api.register("p-drain", gpus=1)
    drained = api.gql(DRAIN, id="p-drain")["drainProvider"]
    assert drained == {"__typename": "ProviderDrained", "providerId": "p-drain"}
    assert api.services.network.provider("p-drain").status == "offline"  # recorded at once
    assert shown(api, "p-drain") == ("offline", "draining: its agent is stopping")


def test_the_agents_client_reads_a_refusal_as_api_rejected_naming_the_field(api: Api) -> None:
    agent = ProviderApi(api.url, api_key=api.session("prov")["token"])
    try:
        with pytest.raises(ApiRejected) as refused:
            agent.register(registration("p-agent", gpus=[
                {"index": 0, "model": H100, "memoryMb": MAX_GPU_MEMORY_MB + 1}]))
        assert str(refused.value) == f"gpus.0.memoryMb: must be at most {MAX_GPU_MEMORY_MB} MiB"
        assert agent.register(registration("p-agent")) == "p-agent"
        hot = GpuTelemetry(index=0, utilization_pct=101, memory_used_mb=None,
                           temperature_c=None, power_w=None, ecc_errors=None, xid_errors=None)
        with pytest.raises(ApiRejected, match=r"^telemetry\.0\.utilization_pct: must be at most"):
            agent.heartbeat("p-agent", [hot])
        agent.heartbeat("p-agent", [])
        agent.drain("p-agent")
        assert shown(api, "p-agent")[0] == "offline"
    finally:
        agent.close()
