"""Live events over graphql-transport-ws: once each, in order, resumable, for many at once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from client.aio import AsyncGpgpuClient
from tests.e2e.network import PROVIDER_OWNER, Network, network
from tests.support.graphql import SUBMIT

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("subs"), temporal_server,
                 [("subs-a", "1xH100:80", "2.0", [])]) as n:
        yield n


def submit(net: Network, client: str, command: str) -> str:
    body = {"name": "sub", "command": command, "max_price_per_gpu_hour": "3", "timeout": 60}
    return str(net.gql(SUBMIT, client, s=body)["submitJob"]["job"]["id"])


async def raw_subscription(net: Network, query: str, variables: dict[str, Any], client: str,
                           count: int) -> list[dict[str, Any]]:
    """The protocol by hand: init, subscribe, collect `count` payloads, complete."""
    ws_url = net.url.replace("http://", "ws://") + "/graphql"
    init = {"Authorization": f"Bearer {net.token(client)}"}
    async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": init}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                  "payload": {"query": query, "variables": variables}}))
        got: list[dict[str, Any]] = []
        while len(got) < count:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert msg["type"] == "next", msg
            got.append(msg["payload"]["data"])
        await ws.send(json.dumps({"id": "1", "type": "complete"}))
        return got


async def test_many_subscribers_each_get_every_event_once_in_order(net: Network) -> None:
    job_id = submit(net, "sub1", "sleep 1; echo done")

    async def follow() -> list[tuple[int, str]]:
        async with AsyncGpgpuClient(api_url=net.url, api_key=net.token("sub1")) as sdk:
            return [(e.seq, e.type) async for e in sdk.follow(job_id)]

    streams = await asyncio.gather(*(follow() for _ in range(25)))
    first = streams[0]
    assert [seq for seq, _ in first] == list(range(1, len(first) + 1))
    assert first[-1][1] == "JobSucceeded"
    assert all(s == first for s in streams)


async def test_reconnecting_subscriber_gets_only_what_it_missed(net: Network) -> None:
    job_id = submit(net, "sub2", "true")
    net.wait_job(job_id, ("SUCCEEDED",), client="sub2")
    async with AsyncGpgpuClient(api_url=net.url, api_key=net.token("sub2")) as sdk:
        everything = [e.seq async for e in sdk.follow(job_id)]
        resumed = [e.seq async for e in sdk.follow(job_id, after=5)]
    assert resumed == everything[5:]


async def test_a_client_cannot_follow_another_clients_job(net: Network) -> None:
    job_id = submit(net, "owner", "true")
    query = "subscription($id: ID!) { jobEvents(jobId: $id) { seq } }"
    ws_url = net.url.replace("http://", "ws://") + "/graphql"
    async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        init = {"Authorization": f"Bearer {net.token('thief')}"}
        await ws.send(json.dumps({"type": "connection_init", "payload": init}))
        await ws.recv()
        await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                  "payload": {"query": query, "variables": {"id": job_id}}}))
        msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
    # Refused before any event: an `error` message, or a result that holds only the error.
    errors = msg["payload"] if msg["type"] == "error" else msg["payload"]["errors"]
    assert msg["type"] == "error" or msg["payload"].get("data") is None
    assert f"no job {job_id} of yours" in errors[0]["message"]


async def test_provider_events_show_its_reservations_live(net: Network) -> None:
    query = ("subscription($p: String!, $a: Int!) { providerEvents(providerId: $p, after: $a)"
             " { seq type data } }")
    history = await raw_subscription(net, query, {"p": "subs-a", "a": 0}, PROVIDER_OWNER, 2)
    types = [h["providerEvents"]["type"] for h in history]
    assert types[0] == "ProviderRegistered"
    last = history[-1]["providerEvents"]["seq"]

    async def watch() -> list[dict[str, Any]]:
        return await raw_subscription(net, query, {"p": "subs-a", "a": last}, PROVIDER_OWNER, 1)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.5)
    job_id = submit(net, "sub3", "true")
    (event,) = await asyncio.wait_for(watcher, 30)
    # The first thing that happens to this provider after `last` is the job's reservation
    # (or a reputation/release from an earlier test's job, which also carries a job id).
    assert event["providerEvents"]["seq"] == last + 1
    assert "job_id" in event["providerEvents"]["data"]
    net.wait_job(job_id, ("SUCCEEDED",), client="sub3")
