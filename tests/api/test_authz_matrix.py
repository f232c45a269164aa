"""Who may call what: every query, mutation, subscription and file endpoint of the real API,
called as anonymous, client A, client B, a provider, a node operator and an admin, is
allowed or refused exactly as MATRIX says. The schema's fields are read by introspection:
one missing from MATRIX fails the test, so a new field can't skip authorisation.

Then the cross-tenant cases one by one: nobody reads or writes what is someone else's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI

from api.services import Services
from domain.identity import ROLES
from infra.settings import Settings
from infra.signing import Grant, grant_url
from ops.launch import free_port
from protocol.spec import parse_job_spec
from tests.support.api_server import running_api
from tests.support.graphql import (
    CANCEL,
    CREATE_KEY,
    REGISTER_PROVIDER,
    SIGN_IN,
    SIGN_UP,
    SUBMIT,
    accepted,
)

WHO = ("anonymous", "client_a", "client_b", "provider", "operator", "admin")
OK, DENY, NULL = "ok", "deny", "null"  # data; refused (an auth error); hidden (null)
PASSWORD = "matrix password"
NODE, P1, P2 = "mx-node", "mx-p1", "mx-p2"
# What the API says when it refuses on authorisation grounds (and nothing else says).
REFUSALS = ("unauthenticated", "forbidden", "of yours", "belongs to another account")

# Who: anonymous, client A, client B, provider (owns P1), operator (owns NODE), admin.
MATRIX: dict[str, tuple[str, str, str, str, str, str]] = {
    #                           anon  A     B     prov  oper  admin
    "Query.job":               (DENY, OK, NULL, OK, NULL, OK),  # A's job, run by P1
    "Query.jobs":              (DENY, OK, OK, DENY, DENY, OK),
    "Query.account":           (DENY, OK, OK, DENY, DENY, OK),
    "Query.providers":         (DENY, OK, OK, OK, OK, OK),  # the catalogue; see redaction
    "Query.provider":          (DENY, OK, OK, OK, OK, OK),
    "Query.providerEarnings":  (DENY, DENY, DENY, OK, DENY, OK),
    "Query.ledger":            (DENY, OK, OK, DENY, DENY, OK),
    "Query.explain":           (DENY, OK, OK, DENY, DENY, OK),
    "Query.nodes":             (DENY, OK, OK, OK, OK, OK),
    "Query.queue":             (DENY, DENY, DENY, DENY, OK, OK),
    "Query.me":                (NULL, OK, OK, OK, OK, OK),
    "Query.apiKeys":           (DENY, OK, OK, OK, OK, OK),
    "Mutation.submitJob":      (DENY, OK, OK, DENY, DENY, OK),
    "Mutation.cancelJob":      (DENY, OK, DENY, DENY, DENY, OK),
    "Mutation.registerNode":   (DENY, DENY, DENY, DENY, OK, OK),
    "Mutation.configureQueue": (DENY, DENY, DENY, DENY, OK, OK),
    "Mutation.suspendGpu":     (DENY, DENY, DENY, OK, DENY, OK),
    "Mutation.resumeGpu":      (DENY, DENY, DENY, OK, DENY, OK),
    "Mutation.setPrice":       (DENY, DENY, DENY, OK, DENY, OK),
    "Mutation.registerProvider": (DENY, DENY, DENY, OK, DENY, OK),
    "Mutation.providerHeartbeat": (DENY, DENY, DENY, OK, DENY, OK),
    "Mutation.drainProvider":  (DENY, DENY, DENY, OK, DENY, OK),
    "Mutation.signUp":         (OK, OK, OK, OK, OK, OK),
    "Mutation.signIn":         (OK, OK, OK, OK, OK, OK),
    "Mutation.signOut":        (DENY, OK, OK, OK, OK, OK),
    "Mutation.changePassword": (DENY, OK, OK, OK, OK, OK),  # each their own
    "Mutation.resetPassword":  (DENY, DENY, DENY, DENY, DENY, OK),
    "Mutation.addRoles":       (DENY, OK, OK, OK, OK, OK),  # each their own
    "Mutation.revokeRole":     (DENY, DENY, DENY, DENY, DENY, OK),
    "Mutation.grantCredits":   (DENY, DENY, DENY, DENY, DENY, OK),
    "Mutation.createApiKey":   (DENY, OK, OK, OK, OK, OK),
    "Mutation.revokeApiKey":   (DENY, OK, OK, OK, OK, OK),  # each its own key
    "Subscription.jobEvents":  (DENY, OK, DENY, OK, DENY, OK),
    "Subscription.providerEvents": (DENY, DENY, DENY, OK, OK, OK),
    # A job's output is its owner's: not its provider's (a check run could copy it).
    "Subscription.jobLog":     (DENY, OK, DENY, DENY, DENY, OK),
    # File endpoints (A's storage space) and the heartbeat REST endpoint (P1)
    "PUT /storage/{A}/{key}":  (DENY, OK, DENY, DENY, DENY, OK),
    "GET /storage/{A}/{key}":  (DENY, OK, DENY, DENY, DENY, OK),
    "GET /storage/{A}":        (DENY, OK, DENY, DENY, DENY, OK),
    "DELETE /storage/{A}/{key}": (DENY, OK, DENY, DENY, DENY, OK),
    "POST /providers/{P1}/heartbeat": (DENY, DENY, DENY, OK, DENY, OK),
    # The provider API's long-poll (heartbeat/complete/fail: tests/adversarial/)
    "GET /provider/v1/providers/{P1}/assignments?wait_s=0": (DENY, DENY, DENY, OK, DENY, OK),
}
HTTP_ENDPOINTS = [k for k in MATRIX if not k.startswith(("Query.", "Mutation.", "Subscription."))]

SPEC = {"name": "mx", "command": "true", "max_price_per_gpu_hour": "3", "timeout": 60}


def registration(provider_id: str) -> dict[str, Any]:
    return {"providerId": provider_id, "region": "eu", "pricePerGpuHourMicro": 2_000_000,
            "node": NODE, "gpus": [{"index": i, "model": "NVIDIA H100 80GB HBM3",
                                    "memoryMb": 81_559} for i in range(2)]}


@dataclass
class World:
    url: str
    app: FastAPI
    http: httpx.Client
    tokens: dict[str, str | None] = field(default_factory=dict)
    clients: dict[str, str | None] = field(default_factory=dict)
    job_id: str = ""  # A's job, allocated to P1
    cancellable: str = ""  # A's job submitted through the API

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    def headers(self, who: str) -> dict[str, str]:
        token = self.tokens.get(who)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def post(self, who: str, query: str, **variables: Any) -> dict[str, Any]:
        r = self.http.post("/graphql", json={"query": query, "variables": variables},
                           headers=self.headers(who))
        r.raise_for_status()
        return r.json()

    def gql(self, who: str, query: str, **variables: Any) -> dict[str, Any]:
        body = self.post(who, query, **variables)
        assert "errors" not in body, body["errors"]
        return body["data"]

    def sign_up(self, who: str, roles: list[str]) -> None:
        found = accepted(self.gql("anonymous", SIGN_UP, e=f"{who}@matrix.test", p=PASSWORD,
                                  r=roles)["signUp"])
        self.tokens[who], self.clients[who] = found["token"], found["user"]["clientId"]

    def throwaway_account(self, roles: tuple[str, ...] = ("client",)) -> str:
        email = f"reset-{time.monotonic_ns()}@matrix.test"
        accepted(self.gql("anonymous", SIGN_UP, e=email, p=PASSWORD, r=list(roles))["signUp"])
        return email

    def fresh_session(self, who: str) -> str:
        return str(accepted(self.gql("anonymous", SIGN_IN, e=f"{who}@matrix.test",
                                     p=PASSWORD)["signIn"])["token"])


def eventually(check: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return result


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[World]:
    port = free_port()
    settings = Settings(
        home=tmp_path_factory.mktemp("authz"), temporal_address=temporal_server,
        event_store="memory", provider_heartbeat_interval_s=60.0, api_port=port,
        api_url=f"http://127.0.0.1:{port}", control_task_queue=f"authz-{port}",
    )
    with running_api(settings) as app, httpx.Client(base_url=settings.api_url,
                                                     timeout=30) as http:
        w = World(settings.api_url, app, http, tokens={"anonymous": None})
        network = w.services.network
        w.services.identity.create_user("admin@matrix.test", PASSWORD, list(ROLES), time.time())
        w.tokens["admin"] = w.fresh_session("admin")
        w.clients["admin"] = w.gql("admin", "{ me { clientId } }")["me"]["clientId"]
        for who, roles in (("client_a", ["client"]), ("client_b", ["client"]),
                           ("provider", ["provider"]), ("provider_2", ["provider"]),
                           ("operator", ["operator"]), ("operator_2", ["operator"])):
            w.sign_up(who, roles)
        w.gql("operator", f'mutation {{ registerNode(nodeId: "{NODE}", region: "eu",'
                          ' operator: "ops") { __typename } }')
        accepted(w.gql("provider", REGISTER_PROVIDER, input=registration(P1))["registerProvider"])
        accepted(w.gql("provider_2", REGISTER_PROVIDER,
                       input=registration(P2))["registerProvider"])
        client_a = str(w.clients["client_a"])
        network.open_client(client_a, 100_000_000)
        network.submit_job("mx-job", client_a, parse_job_spec({**SPEC,
                                                               "queue": f"{NODE}/default"}))
        network.admit_job("mx-job")
        assert network.allocate("mx-job", 1, set(), {P1, P2}).provider_id == P1
        w.job_id = "mx-job"
        # A line of its run's output, so that a caller allowed to follow the log gets one.
        w.services.live_logs.store.append("mx-job", 1, P1, 0, 6, "hello\n")
        w.cancellable = w.gql("client_a", SUBMIT, s=SPEC)["submitJob"]["job"]["id"]
        eventually(lambda: w.services.views.query(
            "SELECT provider_id FROM jobs WHERE job_id = 'mx-job' AND provider_id = ?",
            (P1,)))
        w.http.put(f"/storage/{client_a}/data/a.txt", content=b"A's data",
                   headers=w.headers("client_a")).raise_for_status()
        yield w


# One call of each GraphQL field: the document, and its variables for this caller.


def _key_of(w: World, who: str) -> dict[str, Any]:
    """A key of the caller's own to revoke (anonymous: any id)."""
    if who == "anonymous":
        return {"id": "00000000-0000-0000-0000-000000000000"}
    roles = w.gql(who, "{ me { roles } }")["me"]["roles"]
    made = w.gql(who, CREATE_KEY, n=f"revoke-me-{time.monotonic_ns()}", s=roles[:1])
    return {"id": made["createApiKey"]["id"]}


def _a_role_held(w: World, who: str) -> dict[str, Any]:
    """One of the caller's own roles again (no change: later rows see the same callers)."""
    if who == "anonymous":
        return {"r": ["client"]}
    roles = w.gql(who, "{ me { roles } }")["me"]["roles"]
    return {"r": [r for r in roles if r != "admin"][:1]}


def _scopes(w: World, who: str) -> dict[str, Any]:
    if who == "anonymous":
        return {"n": "k", "s": ["client"]}
    roles = w.gql(who, "{ me { roles } }")["me"]["roles"]
    return {"n": f"key-{time.monotonic_ns()}", "s": roles}


CALLS: dict[str, tuple[str, Callable[[World, str], dict[str, Any]]]] = {
    "Query.job": ("query($id: ID!) { job(id: $id) { id clientId } }",
                  lambda w, who: {"id": w.job_id}),
    "Query.jobs": ("{ jobs { id } }", lambda w, who: {}),
    "Query.account": ("{ account { clientId balanceMicro } }", lambda w, who: {}),
    "Query.providers": ("{ providers { providerId earningsMicro } }", lambda w, who: {}),
    "Query.provider": ("query($p: String!) { provider(providerId: $p) { providerId } }",
                       lambda w, who: {"p": P1}),
    "Query.providerEarnings": ("query($p: String!) { providerEarnings(providerId: $p)"
                               " { balanceMicro } }", lambda w, who: {"p": P1}),
    "Query.ledger": ("{ ledger { transferId } }", lambda w, who: {}),
    "Query.explain": ("query($s: JSON!) { explain(spec: $s) { __typename } }",
                      lambda w, who: {"s": SPEC}),
    "Query.nodes": ("{ nodes { nodeId } }", lambda w, who: {}),
    "Query.queue": ("query($n: String!) { queue(name: $n) { jobId } }",
                    lambda w, who: {"n": f"{NODE}/default"}),
    "Query.me": ("{ me { id email roles } }", lambda w, who: {}),
    "Query.apiKeys": ("{ apiKeys { id name } }", lambda w, who: {}),
    "Mutation.submitJob": (SUBMIT, lambda w, who: {"s": SPEC}),
    "Mutation.cancelJob": (CANCEL,
                           lambda w, who: {"id": w.cancellable}),
    "Mutation.registerNode": (f'mutation {{ registerNode(nodeId: "{NODE}", region: "eu",'
                              ' operator: "ops") { __typename } }', lambda w, who: {}),
    "Mutation.configureQueue": (f'mutation {{ configureQueue(nodeId: "{NODE}", name: "q1",'
                                ' gpuModels: ["H100"]) { __typename } }', lambda w, who: {}),
    "Mutation.suspendGpu": ("mutation($p: String!) { suspendGpu(providerId: $p, index: 1)"
                            " { __typename } }", lambda w, who: {"p": P1}),
    "Mutation.resumeGpu": ("mutation($p: String!) { resumeGpu(providerId: $p, index: 1)"
                           " { __typename } }", lambda w, who: {"p": P1}),
    "Mutation.setPrice": ('mutation($p: String!) { setPrice(providerId: $p, '
                          'pricePerGpuHour: "2") { __typename } }', lambda w, who: {"p": P1}),
    "Mutation.registerProvider": (REGISTER_PROVIDER, lambda w, who: {"input": registration(P1)}),
    "Mutation.providerHeartbeat": ("mutation($p: String!) { providerHeartbeat(providerId: $p,"
                                   " telemetry: []) { __typename } }", lambda w, who: {"p": P1}),
    "Mutation.drainProvider": ("mutation($p: String!) { drainProvider(providerId: $p)"
                               " { __typename } }", lambda w, who: {"p": P1}),
    "Mutation.signUp": (SIGN_UP, lambda w, who: {"e": f"new-{time.monotonic_ns()}@matrix.test",
                                                 "p": PASSWORD, "r": ["client"]}),
    "Mutation.signIn": (SIGN_IN, lambda w, who: {"e": "client_a@matrix.test", "p": PASSWORD}),
    "Mutation.signOut": ("mutation { signOut }", lambda w, who: {}),
    "Mutation.changePassword": ("mutation($p: String!) { changePassword(currentPassword: $p,"
                                " newPassword: $p) { __typename ... on Session { token } } }",
                                lambda w, who: {"p": PASSWORD}),
    "Mutation.resetPassword": ("mutation($e: String!) { resetPassword(email: $e)"
                               " { __typename } }", lambda w, who: {"e": w.throwaway_account()}),
    "Mutation.addRoles": ("mutation($r: [String!]!) { addRoles(roles: $r) { __typename } }",
                          _a_role_held),
    "Mutation.revokeRole": ('mutation($e: String!) { revokeRole(email: $e, role: "provider")'
                            " { __typename } }",
                            lambda w, who: {"e": w.throwaway_account(("client", "provider"))}),
    "Mutation.grantCredits": ('mutation { grantCredits(email: "client_a@matrix.test",'
                              ' amount: "1") { __typename } }', lambda w, who: {}),
    "Mutation.createApiKey": (CREATE_KEY, _scopes),
    "Mutation.revokeApiKey": ("mutation($id: ID!) { revokeApiKey(id: $id) { __typename } }",
                              _key_of),
}


def outcome(body: dict[str, Any], name: str) -> str:
    if body.get("errors"):
        message = body["errors"][0]["message"]
        assert any(word in message for word in REFUSALS), f"{name}: not a refusal: {message}"
        return DENY
    answer = body["data"][name]
    if isinstance(answer, dict) and answer.get("__typename") == "FieldError":
        return f"refused: {answer}"  # the gate let the caller through; the call was refused
    return NULL if answer is None else OK


def call_graphql(w: World, key: str, who: str) -> str:
    query, variables = CALLS[key]
    if key == "Mutation.signOut" and who != "anonymous":  # end a session of its own
        r = w.http.post("/graphql", json={"query": query},
                        headers={"Authorization": f"Bearer {w.fresh_session(who)}"})
        return outcome(r.json(), "signOut")
    if key == "Mutation.changePassword" and who != "anonymous":
        # From a session (an API key may not), to the same password; the account's other
        # sessions end, so the caller goes on with the one the answer holds.
        r = w.http.post("/graphql", json={"query": query, "variables": variables(w, who)},
                        headers={"Authorization": f"Bearer {w.fresh_session(who)}"})
        found = outcome(r.json(), "changePassword")
        if found == OK and str(w.tokens.get(who, "")).startswith("gps_"):
            w.tokens[who] = r.json()["data"]["changePassword"]["token"]
        return found
    return outcome(w.post(who, query, **variables(w, who)), key.split(".")[1])


async def first_message(w: World, who: str, query: str, variables: dict[str, Any],
                        init: dict[str, Any] | None = None) -> dict[str, Any]:
    """Subscribe over graphql-transport-ws and return the first message after the ack."""
    ws_url = w.url.replace("http://", "ws://") + "/graphql"
    token = w.tokens.get(who)
    payload = init if init is not None else (
        {"Authorization": f"Bearer {token}"} if token else {})
    async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ack["type"] == "connection_ack", ack
        await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                  "payload": {"query": query, "variables": variables}}))
        return json.loads(await asyncio.wait_for(ws.recv(), 10))


SUBSCRIPTIONS = {
    "Subscription.jobEvents": ("subscription($id: ID!) { jobEvents(jobId: $id) { seq type } }",
                               lambda w: {"id": w.job_id}),
    "Subscription.providerEvents": ("subscription($p: String!) { providerEvents(providerId: $p)"
                                    " { seq type } }", lambda w: {"p": P1}),
    "Subscription.jobLog": ("subscription($id: ID!) { jobLog(jobId: $id) { seq text } }",
                            lambda w: {"id": w.job_id}),
}


def call_subscription(w: World, key: str, who: str) -> str:
    query, variables = SUBSCRIPTIONS[key]
    msg = asyncio.run(first_message(w, who, query, variables(w)))
    if msg["type"] == "error":
        return outcome({"errors": msg["payload"]}, key)
    return outcome(msg["payload"], key.split(".")[1])


def call_http(w: World, key: str, who: str) -> str:
    a = w.clients["client_a"]
    headers = w.headers(who)
    if key.startswith(("GET /storage/{A}/", "DELETE")):  # something there to get or delete
        w.http.put(f"/storage/{a}/data/m.txt", content=b"m",
                   headers=w.headers("client_a")).raise_for_status()
    method, path = key.split(" ")
    path = (path.replace("{A}", str(a)).replace("{key}", "data/m.txt")
            .replace("{P1}", P1))
    r = w.http.request(method, path, headers=headers, content=b"m" if method == "PUT" else None,
                       json=[] if method == "POST" else None)
    if r.status_code in (401, 403):
        return DENY
    assert r.status_code < 300, (key, who, r.status_code, r.text)
    return OK


def schema_fields(w: World) -> set[str]:
    data = w.gql("anonymous", "{ __schema { queryType { fields { name } }"
                 " mutationType { fields { name } } subscriptionType { fields { name } } } }")
    schema = data["__schema"]
    return {f"{kind}.{f['name']}"
            for kind, root in (("Query", "queryType"), ("Mutation", "mutationType"),
                               ("Subscription", "subscriptionType"))
            for f in schema[root]["fields"]}


def test_every_field_is_in_the_matrix(world: World) -> None:
    fields = schema_fields(world)  # introspection is open to anonymous callers
    missing = fields - MATRIX.keys()
    assert not missing, f"add these fields to MATRIX (and a call to CALLS): {sorted(missing)}"
    stale = {k for k in MATRIX if "." in k.split(" ")[0]} - fields
    assert not stale, f"MATRIX names fields the schema no longer has: {sorted(stale)}"
    assert "signUp" in {k.split(".")[1] for k in fields}


@pytest.mark.parametrize("key", [k for k in MATRIX if k.startswith(("Query.", "Mutation."))])
def test_graphql_field(world: World, key: str) -> None:
    got = {who: call_graphql(world, key, who) for who in WHO}
    assert got == dict(zip(WHO, MATRIX[key], strict=True))


@pytest.mark.parametrize("key", list(SUBSCRIPTIONS))
def test_subscription(world: World, key: str) -> None:
    got = {who: call_subscription(world, key, who) for who in WHO}
    assert got == dict(zip(WHO, MATRIX[key], strict=True))


@pytest.mark.parametrize("key", HTTP_ENDPOINTS)
def test_http_endpoint(world: World, key: str) -> None:
    got = {who: call_http(world, key, who) for who in WHO}
    assert got == dict(zip(WHO, MATRIX[key], strict=True))


# Cross-tenant, one case at a time


def test_client_b_reads_nothing_of_client_a(world: World) -> None:
    w, a = world, str(world.clients["client_a"])
    assert w.gql("client_b", "query($id: ID!) { job(id: $id) { id } }", id=w.job_id)["job"] is None
    assert w.job_id not in {j["id"] for j in w.gql("client_b", "{ jobs { id } }")["jobs"]}
    ledger = w.gql("client_b", "{ ledger { transferId } }")["ledger"]
    assert not any(w.job_id in e["transferId"] for e in ledger)
    assert w.gql("client_b", "{ account { clientId } }")["account"]["clientId"] != a
    assert w.http.get(f"/storage/{a}/data/a.txt", headers=w.headers("client_b")).status_code == 403
    assert w.http.get(f"/storage/{a}", headers=w.headers("client_b")).status_code == 403
    put = w.http.put(f"/storage/{a}/data/a.txt", content=b"B was here",
                     headers=w.headers("client_b"))
    assert put.status_code == 403
    assert w.http.get(f"/storage/{a}/data/a.txt",
                      headers=w.headers("client_a")).content == b"A's data"
    # Nor through the provider role: P1 runs A's job but gets no storage beyond presigned URLs.
    assert w.http.get(f"/storage/{a}/data/a.txt", headers=w.headers("provider")).status_code == 403


def test_a_presigned_url_works_without_a_token(world: World) -> None:
    a = str(world.clients["client_a"])
    grant = Grant("GET", a, "data/a.txt", int(time.time()) + 60, world.job_id, 1, P1, 8)
    url = grant_url(world.services.settings.signing_secret, world.url, grant)
    assert httpx.get(url).content == b"A's data"
    forged = url.replace("sig=", "sig=0")
    assert httpx.get(forged).status_code == 403
    # A grant of a run that is not P2's (A's job runs on P1) is refused, signature and all.
    p2 = dataclasses.replace(grant, provider_id=P2)
    assert httpx.get(grant_url(world.services.settings.signing_secret, world.url, p2)
                     ).status_code == 403


def test_a_provider_cannot_touch_another_providers_gpus(world: World) -> None:
    w = world
    for query in (CALLS["Mutation.suspendGpu"][0], CALLS["Mutation.setPrice"][0],
                  CALLS["Mutation.providerHeartbeat"][0]):
        assert "forbidden" in w.post("provider_2", query, p=P1)["errors"][0]["message"]
    taken = w.post("provider_2", REGISTER_PROVIDER, input=registration(P1))["errors"][0]["message"]
    assert taken == f"providerId: '{P1}' belongs to another account"
    earnings = w.post("provider_2", CALLS["Query.providerEarnings"][0], p=P1)
    assert "forbidden" in earnings["errors"][0]["message"]
    mine = {p["providerId"]: p for p in w.gql("provider_2", "{ providers { providerId"
                                              " earningsMicro telemetry { at } gpus"
                                              " { busyJobId } } }")["providers"]}
    assert mine[P2]["earningsMicro"] == 0
    assert mine[P1]["earningsMicro"] is None and mine[P1]["telemetry"] == []
    assert all(g["busyJobId"] is None for g in mine[P1]["gpus"])
    owner = w.gql("provider", "query($p: String!) { provider(providerId: $p) { earningsMicro"
                              " gpus { busyJobId } } }", p=P1)["provider"]
    assert owner["earningsMicro"] == 0 and w.job_id in {g["busyJobId"] for g in owner["gpus"]}
    # The operator of P1's node sees which job holds its GPUs, not the provider's money.
    ops = w.gql("operator", "query($p: String!) { provider(providerId: $p) { earningsMicro"
                            " gpus { busyJobId } } }", p=P1)["provider"]
    assert ops["earningsMicro"] is None and w.job_id in {g["busyJobId"] for g in ops["gpus"]}
    assert w.gql("provider", "{ me { providerIds } }")["me"]["providerIds"] == [P1]


def test_an_operator_controls_only_its_own_nodes(world: World) -> None:
    w = world
    refused = w.post("operator_2", CALLS["Mutation.configureQueue"][0])["errors"][0]["message"]
    assert refused == f"forbidden: node '{NODE}' is not one of yours"
    taken = w.post("operator_2", CALLS["Mutation.registerNode"][0])["errors"][0]["message"]
    assert taken == f"nodeId: '{NODE}' belongs to another account"
    local = w.post("operator", 'mutation { configureQueue(nodeId: "local", name: "x",'
                               ' gpuModels: []) { __typename } }')["errors"][0]["message"]
    assert local == "forbidden: node 'local' is not one of yours"  # the network's: admins'
    assert w.gql("operator", "{ me { nodeIds } }")["me"]["nodeIds"] == [NODE]
    queue = w.post("operator_2", CALLS["Query.queue"][0], n=f"{NODE}/default")
    assert "forbidden" in queue["errors"][0]["message"]


def test_an_api_key_acts_only_within_its_scopes_and_stops_when_revoked(world: World) -> None:
    w = world
    w.sign_up("both", ["client", "provider"])
    made = w.gql("both", CREATE_KEY, n="client-only", s=["client"])["createApiKey"]
    assert made["scopes"] == ["client"] and len(made["key"]) >= 32
    key = {"Authorization": f"Bearer {made['key']}"}
    me = w.http.post("/graphql", json={"query": "{ me { roles clientId } }"}, headers=key)
    assert me.json()["data"]["me"]["roles"] == ["client"]
    provider_call = w.http.post("/graphql", json={"query": "{ providerEarnings(providerId:"
                                                          f' "{P1}") {{ balanceMicro }} }}'},
                                headers=key).json()
    assert "needs the provider role" in provider_call["errors"][0]["message"]
    broader = w.gql("both", CREATE_KEY, n="too-much", s=["admin"])["createApiKey"]
    assert broader["field"] == "scopes"
    assert broader["message"].startswith("'admin' is not one of client, provider")
    minted = w.http.post("/graphql", json={"query": CREATE_KEY, "variables": {
        "n": "from-a-key", "s": ["client"]}}, headers=key).json()
    assert "made from a signed-in session" in minted["errors"][0]["message"]
    # Another account can't revoke it; its owner can, and it stops working at once.
    revoke = ("mutation($id: ID!) { revokeApiKey(id: $id) { __typename"
              " ... on ApiKeyRevoked { id } ... on FieldError { field message } } }")
    other = w.gql("client_b", revoke, id=made["id"])["revokeApiKey"]
    assert other == {"__typename": "FieldError", "field": "id",
                     "message": f"no API key {made['id']!r} of yours"}
    revoked = w.gql("both", revoke, id=made["id"])["revokeApiKey"]
    assert revoked == {"__typename": "ApiKeyRevoked", "id": made["id"]}
    gone = w.http.post("/graphql", json={"query": "{ me { id } }"}, headers=key).json()
    assert gone["data"]["me"] is None
    assert made["id"] not in {k["id"] for k in w.gql("both", "{ apiKeys { id } }")["apiKeys"]}


def test_sign_out_ends_the_session_and_accounts_refuse_bad_input(world: World) -> None:
    w = world
    token = w.fresh_session("client_a")
    headers = {"Authorization": f"Bearer {token}"}
    out = w.http.post("/graphql", json={"query": "mutation { signOut }"}, headers=headers)
    assert out.json()["data"]["signOut"] is True
    me = w.http.post("/graphql", json={"query": "{ me { id } }"}, headers=headers).json()
    assert me["data"]["me"] is None
    assert w.http.get(f"/storage/{w.clients['client_a']}", headers=headers).status_code == 401

    wrong = w.gql("anonymous", SIGN_IN, e="client_a@matrix.test", p="wrong password")
    assert wrong["signIn"] == {"__typename": "FieldError", "field": "password",
                               "message": "the email and password do not match an account"}
    nobody = w.gql("anonymous", SIGN_IN, e="nobody@matrix.test", p=PASSWORD)
    assert nobody == wrong  # no hint who exists


def test_sign_up_and_sign_in_refusals_name_their_field_and_make_nothing(world: World) -> None:
    """An e-mail taken, a short password, a role not offered, a wrong password: each a
    FieldError under its argument, and no account or session is recorded."""
    w = world
    identity = w.services.identity
    before = identity.recorder.max_notification_id()

    def refusal(query: str, **variables: Any) -> dict[str, Any]:
        (answer,) = w.gql("anonymous", query, **variables).values()
        assert answer["__typename"] == "FieldError", answer
        return {"field": answer["field"], "message": answer["message"]}

    assert refusal(SIGN_UP, e="CLIENT_A@matrix.test ", p=PASSWORD, r=["client"]) == {
        "field": "email", "message": "already registered"}
    assert refusal(SIGN_UP, e="short@matrix.test", p="seven77", r=["client"]) == {
        "field": "password", "message": "at least 8 characters"}
    assert refusal(SIGN_UP, e="boss@matrix.test", p=PASSWORD, r=["admin"]) == {
        "field": "roles", "message": "'admin' is not one of client, provider, operator"}
    assert refusal(SIGN_UP, e="not-an-email", p=PASSWORD, r=["client"])["field"] == "email"
    assert refusal(SIGN_IN, e="client_b@matrix.test", p="wrong password") == {
        "field": "password", "message": "the email and password do not match an account"}
    # No account, no session: no event of domain/identity.py. (The store is the network's
    # too, whose own events, e.g. a provider's liveness from an earlier test's heartbeat,
    # a loaded machine records a moment later, whenever its monitor gets the CPU.)
    since = identity.recorder.select_notifications(start=before + 1, limit=1000)
    assert [n.topic for n in since if n.topic.startswith("domain.identity:")] == []
    assert identity.user_by_email("short@matrix.test") is None
    assert identity.user_by_email("boss@matrix.test") is None


def test_cancelling_a_job_that_ended_is_refused_by_id_and_changes_nothing(world: World) -> None:
    w = world
    network, client_a = w.services.network, str(w.clients["client_a"])
    network.submit_job("mx-ended", client_a, parse_job_spec(SPEC))
    network.admit_job("mx-ended")
    network.finish_job("mx-ended", succeeded=False, reason="cancelled earlier", cancelled=True)
    eventually(lambda: w.services.views.query(
        "SELECT state FROM jobs WHERE job_id = 'mx-ended' AND state = 'CANCELLED'"))
    before = network.recorder.max_notification_id()

    answer = w.gql("client_a", CANCEL, id="mx-ended")["cancelJob"]
    assert answer == {"__typename": "FieldError", "field": "id",
                      "message": "job mx-ended is already CANCELLED"}, answer
    assert network.recorder.max_notification_id() == before
    assert network.job("mx-ended").state.value == "CANCELLED"
    # Someone else's job is no refusal to mend: a GraphQL error, the job not named as theirs.
    theirs = w.post("client_b", CANCEL, id="mx-ended")
    assert theirs["errors"][0]["message"] == "id: no job mx-ended of yours", theirs


def test_a_websocket_with_a_bad_token_is_closed(world: World) -> None:
    async def connect() -> int | None:
        ws_url = world.url.replace("http://", "ws://") + "/graphql"
        async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connection_init",
                                      "payload": {"Authorization": "Bearer gps_forged"}}))
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None
        return None

    assert asyncio.run(connect()) == 4403


def test_the_old_client_header_names_no_one(world: World) -> None:
    a = str(world.clients["client_a"])
    r = world.http.post("/graphql", json={"query": "{ jobs { id } }"},
                        headers={"X-Gpgpu-Client": a})
    assert "unauthenticated" in r.json()["errors"][0]["message"]
    assert world.http.get(f"/storage/{a}", headers={"X-Gpgpu-Client": a}).status_code == 401


def test_guessing_a_password_is_stopped_and_a_reset_lets_the_owner_back(world: World) -> None:
    w = world
    email = w.throwaway_account()
    wrong = [w.gql("anonymous", SIGN_IN, e=email, p="not the password")["signIn"]
             for _ in range(5)]
    assert all(a["field"] == "password" and a["message"].startswith(
        "the email and password do not match") for a in wrong), wrong
    before = w.services.identity.recorder.max_notification_id()
    locked = w.gql("anonymous", SIGN_IN, e=email, p=PASSWORD)["signIn"]  # right, too late
    assert locked["__typename"] == "FieldError" and locked["field"] == "password", locked
    assert locked["message"].startswith("5 wrong passwords for this email"), locked
    assert "try again in" in locked["message"]
    assert w.services.identity.recorder.max_notification_id() == before  # no session made

    temporary = w.gql("admin", "mutation($e: String!) { resetPassword(email: $e)"
                      " { ... on PasswordReset { temporaryPassword } } }",
                      e=email)["resetPassword"]["temporaryPassword"]
    token = w.gql("anonymous", SIGN_IN, e=email, p=temporary)["signIn"]["token"]
    changed = w.http.post("/graphql", headers={"Authorization": f"Bearer {token}"}, json={
        "query": "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c,"
                 " newPassword: $n) { ... on Session { token } } }",
        "variables": {"c": temporary, "n": PASSWORD}})
    assert "errors" not in changed.json() and changed.json()["data"]["changePassword"]["token"]
    me = w.http.post("/graphql", headers={"Authorization": f"Bearer {token}"},
                     json={"query": "{ me { email } }"}).json()
    assert me["data"]["me"] is None  # the session from before the change ended
    assert w.gql("anonymous", SIGN_IN, e=email, p=PASSWORD)["signIn"]["token"]


def test_a_provider_takes_on_a_role_and_an_admin_takes_it_away_at_once(world: World) -> None:
    w = world
    email = w.throwaway_account(("provider",))
    token = w.gql("anonymous", SIGN_IN, e=email, p=PASSWORD)["signIn"]["token"]
    bearer = {"Authorization": f"Bearer {token}"}

    def as_them(query: str, **variables: Any) -> dict[str, Any]:
        r = w.http.post("/graphql", headers=bearer, json={"query": query, "variables": variables})
        return r.json()

    def me() -> dict[str, Any]:
        return as_them("{ me { roles clientId } }")["data"]["me"]

    jobs = "{ jobs { id } }"
    assert me() == {"roles": ["provider"], "clientId": None}
    assert as_them(jobs)["errors"][0]["message"].startswith("forbidden")
    roles = "... on User { roles clientId } ... on FieldError { field message }"
    refused = as_them(f'mutation {{ addRoles(roles: ["admin"]) {{ {roles} }} }}')
    assert refused["data"]["addRoles"] == {
        "field": "roles", "message": "'admin' is not one of client, provider, operator"}
    added = as_them(f'mutation {{ addRoles(roles: ["client"]) {{ {roles} }} }}')
    assert added["data"]["addRoles"]["roles"] == ["client", "provider"]
    assert me() == added["data"]["addRoles"]  # the same session, at once, with a storage space
    assert me()["clientId"] and as_them(jobs)["data"]["jobs"] == []

    revoke = ("mutation($e: String!, $r: String!) { revokeRole(email: $e, role: $r) {"
              " ... on User { roles } ... on FieldError { field message } } }")
    assert w.gql("admin", revoke, e=email, r="client")["revokeRole"]["roles"] == ["provider"]
    assert me() == {"roles": ["provider"], "clientId": None}  # no cached caller outlives it
    assert as_them(jobs)["errors"][0]["message"].startswith("forbidden")
    only = w.gql("admin", revoke, e=email, r="provider")["revokeRole"]
    assert only == {"field": "role", "message": "'provider' is the account's only role; "
                    "it keeps one"}
    unknown = w.gql("admin", revoke, e="nobody@matrix.test", r="client")["revokeRole"]
    assert unknown == {"field": "email", "message": "no account has 'nobody@matrix.test'"}
