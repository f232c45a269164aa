"""Multiplexed subscriptions against the real API (in-process, memory store), over the
graphql-transport-ws protocol by hand: subscribers of one document share each event's
execution and read the same bytes; every one still gets every event once, in order, also
when it falls behind or a row reaches the view from elsewhere; a revoked key ends its own
subscriptions and no one else's."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import websockets

from api import multiplex
from api.services import Services
from bench.events_store import step_data
from infra.settings import Settings
from ops.launch import free_port
from protocol.spec import parse_job_spec
from tests.support.api_server import running_api

EVENTS = """subscription($id: ID!, $after: Int!) {
  jobEvents(jobId: $id, after: $after) { seq type data } }"""
# Another document (an alias, fewer fields) and one whose result a variable shapes.
SHORT = """subscription($id: ID!, $after: Int!) {
  e: jobEvents(jobId: $id, after: $after) { seq } }"""
SHAPED = """subscription($id: ID!, $after: Int!, $data: Boolean!) {
  jobEvents(jobId: $id, after: $after) { seq data @include(if: $data) } }"""
SPEC = {"name": "mux", "command": "true", "max_price_per_gpu_hour": "3", "timeout": 60}
SIGN_UP = """mutation($e: String!, $p: String!) {
  signUp(email: $e, password: $p, roles: ["client"]) {
    ... on Session { token user { clientId } } } }"""
CREATE_KEY = """mutation { createApiKey(name: "mux", scopes: ["client"]) {
  ... on ApiKeyCreated { id key } } }"""


@dataclass
class Api:
    url: str
    services: Services
    http: httpx.Client
    token: str
    client_id: str

    def gql(self, query: str, token: str | None = None, **variables: Any) -> dict[str, Any]:
        r = self.http.post("/graphql", json={"query": query, "variables": variables},
                           headers={"Authorization": f"Bearer {token or self.token}"})
        body = r.json()
        assert not body.get("errors"), body
        return dict(body["data"])

    def new_job(self) -> str:
        job_id = str(uuid.uuid4())
        self.services.network.submit_job(job_id, self.client_id, parse_job_spec(SPEC))
        deadline = time.monotonic() + 15
        while not self.services.views.query("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)):
            assert time.monotonic() < deadline, "the read model never showed the job"
            time.sleep(0.02)
        return job_id

    def steps(self, job_id: str, first: int, n: int) -> None:
        """n InputsStaged events (attempts first..), saved together: one batch."""
        network = self.services.network
        job = network.job(job_id)
        for attempt in range(first, first + n):
            job.record_step("inputs_staged", attempt,
                            step_data("inputs_staged", "mux-p", job_id))
        network.save(job)

    def finish(self, job_id: str) -> None:
        self.services.network.finish_job(job_id, True, "")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Api]:
    port = free_port()
    settings = Settings(
        home=tmp_path_factory.mktemp("mux"), temporal_address=temporal_server,
        event_store="memory", provider_heartbeat_interval_s=60.0, api_port=port,
        api_url=f"http://127.0.0.1:{port}", control_task_queue=f"mux-{port}",
    )
    with running_api(settings) as app, httpx.Client(base_url=settings.api_url,
                                                     timeout=30) as http:
        r = http.post("/graphql", json={"query": SIGN_UP, "variables": {
            "e": "mux@mux.test", "p": "mux password 1"}}).json()["data"]["signUp"]
        yield Api(settings.api_url, app.state.services, http, r["token"], r["user"]["clientId"])


class Sub:
    """One websocket with one subscription: the raw `next` frames it read."""

    def __init__(self, ws: Any):
        self.ws = ws
        self.frames: list[str] = []
        self.done = False

    async def read(self, count: int, timeout_s: float = 20) -> list[dict[str, Any]]:
        """Until `count` next frames in all (or the stream completes)."""
        deadline = time.monotonic() + timeout_s
        while len(self.frames) < count and not self.done:
            raw = await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic()))
            msg = json.loads(raw)
            if msg["type"] == "complete":
                self.done = True
            else:
                assert msg["type"] == "next" and msg["id"] == "1", msg
                self.frames.append(raw)
        return [json.loads(f)["payload"] for f in self.frames]


@asynccontextmanager
async def subscribed(api: Api, query: str, token: str | None = None,
                     **variables: Any) -> AsyncIterator[Sub]:
    url = api.url.replace("http://", "ws://") + "/graphql"
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": {"Authorization": f"Bearer {token or api.token}"}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                  "payload": {"query": query, "variables": variables}}))
        yield Sub(ws)


def seqs(payloads: list[dict[str, Any]], field: str = "jobEvents") -> list[int]:
    return [p["data"][field]["seq"] for p in payloads]


async def test_subscribers_of_one_document_share_each_execution(api: Api) -> None:
    job = api.new_job()
    async with (subscribed(api, EVENTS, id=job, after=0) as a,
                subscribed(api, EVENTS, id=job, after=0) as b,
                subscribed(api, EVENTS, id=job, after=1) as c,  # resumes: same group
                subscribed(api, SHORT, id=job, after=0) as d):
        await asyncio.gather(a.read(1), b.read(1), d.read(1))  # JobSubmitted: all are in
        live = api.services.live
        assert sorted(g.subscribers for g in live.groups.values()) == [1, 3]
        for n in range(1, 11):
            await asyncio.to_thread(api.steps, job, n, 1)
        got = await asyncio.gather(a.read(11), b.read(11), c.read(10), d.read(11))
        assert seqs(got[0]) == seqs(got[1]) == list(range(1, 12))
        assert seqs(got[2]) == list(range(2, 12))
        assert seqs(got[3], "e") == list(range(1, 12))
        assert a.frames == b.frames and a.frames[1:] == c.frames  # the very same bytes
        assert got[3][1] == {"data": {"e": {"seq": 2}}}
        assert got[0][1]["data"]["jobEvents"]["data"]["attempt"] == 1
        # Ten events, plus the first for those that came in: executed once per document.
        executions = sorted(g.executions for g in live.groups.values())
        assert executions == [11, 11], executions
    await asyncio.sleep(0.1)
    assert f"job:{job}" not in api.services.live.feeds  # the last one out closes the feed


async def test_variables_that_shape_the_result_make_their_own_group(api: Api) -> None:
    job = api.new_job()
    async with (subscribed(api, SHAPED, id=job, after=0, data=True) as full,
                subscribed(api, SHAPED, id=job, after=0, data=False) as bare):
        await asyncio.gather(full.read(1), bare.read(1))
        assert len(api.services.live.groups) == 2
        await asyncio.to_thread(api.steps, job, 1, 1)
        with_data, without = await asyncio.gather(full.read(2), bare.read(2))
        assert with_data[1]["data"]["jobEvents"]["data"]["attempt"] == 1
        assert without[1] == {"data": {"jobEvents": {"seq": 2}}}


async def test_one_group_serves_every_job_followed_with_the_same_document(api: Api) -> None:
    jobs = [api.new_job(), api.new_job()]
    async with (subscribed(api, EVENTS, id=jobs[0], after=0) as a,
                subscribed(api, EVENTS, id=jobs[1], after=0) as b):
        first = await asyncio.gather(a.read(1), b.read(1))
        assert [p[0]["data"]["jobEvents"]["seq"] for p in first] == [1, 1]
        (group,) = api.services.live.groups.values()
        assert group.subscribers == 2 and group.executions == 2  # one per job's event
        await asyncio.to_thread(api.steps, jobs[1], 1, 1)
        assert seqs(await b.read(2)) == [1, 2] and len(a.frames) == 1


async def test_a_subscriber_behind_reads_what_it_missed_once_in_order(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(multiplex, "MAX_QUEUED", 3)  # a batch of 20 overflows every queue
    job = api.new_job()
    async with subscribed(api, EVENTS, id=job, after=0) as a:
        await a.read(1)
        await asyncio.to_thread(api.steps, job, 1, 20)
        await asyncio.to_thread(api.steps, job, 21, 2)
        assert seqs(await a.read(23)) == list(range(1, 24))
        # Applied by another replica: the row is in the view and only a NOTIFY says so.
        services = api.services
        with services.views.transaction() as cur:
            cur.execute("INSERT INTO job_events (job_id, seq, notification_id, type, at, data)"
                        " VALUES (?, 24, 0, 'Elsewhere', '', '{}')", (job,))
        position = await asyncio.to_thread(services.projector.position)
        services.broadcaster.advance(position + 1, None)
        got = await a.read(24)
        assert seqs(got) == list(range(1, 25)) and got[-1]["data"]["jobEvents"]["type"] == \
            "Elsewhere"


async def test_a_job_that_ends_completes_every_stream(api: Api) -> None:
    job = api.new_job()
    async with (subscribed(api, EVENTS, id=job, after=0) as a,
                subscribed(api, SHORT, id=job, after=0) as b):
        await asyncio.gather(a.read(1), b.read(1))
        await asyncio.to_thread(api.finish, job)
        got = await asyncio.gather(a.read(99), b.read(99))
        assert a.done and b.done
        assert got[0][-1]["data"]["jobEvents"]["type"] == "JobSucceeded"
    async with subscribed(api, EVENTS, id=job, after=len(got[0])) as late:
        assert await late.read(1, timeout_s=5) == [] and late.done  # nothing after the end


async def test_a_revoked_key_ends_its_own_subscriptions_within_the_second(api: Api) -> None:
    job = api.new_job()
    made = api.gql(CREATE_KEY)["createApiKey"]
    async with (subscribed(api, EVENTS, token=made["key"], id=job, after=0) as keyed,
                subscribed(api, EVENTS, id=job, after=0) as session):
        await asyncio.gather(keyed.read(1), session.read(1))
        api.gql("mutation($id: ID!) { revokeApiKey(id: $id) { __typename } }", id=made["id"])
        started = time.monotonic()
        ended = await keyed.read(3, timeout_s=5)  # the error, then complete
        assert time.monotonic() - started < 2.5
        assert len(ended) == 2 and keyed.done
        assert ended[1]["errors"][0]["message"] == multiplex.REVOKED
        await asyncio.to_thread(api.steps, job, 1, 1)
        assert seqs(await session.read(2)) == [1, 2]  # the session's own goes on
