from __future__ import annotations

import httpx
import pytest

from client import ApiError, ApiUnreachable, AsyncGpgpuClient, GpgpuClient
from tests.client.fake_api import CLIENT, TOKEN, FakeApi, happy_events, job_json


@pytest.fixture
def running(api: FakeApi) -> FakeApi:
    api.jobs["job-1"] = job_json()
    api.events = happy_events()
    return api


def test_follow_speaks_graphql_transport_ws(running: FakeApi) -> None:
    with GpgpuClient(running.url, CLIENT) as gp:
        events = list(gp.follow("job-1"))

    assert [e.seq for e in events] == list(range(1, 12))
    assert events[-1].type == "JobSucceeded"
    assert running.ws_inits == [{"Authorization": f"Bearer {TOKEN}"}]
    assert running.ws_subscribes == [{"jobId": "job-1", "after": 0}]
    assert running.pongs == 1


def test_follow_resumes_after_the_last_event_seen(running: FakeApi) -> None:
    running.drop_after = 4

    with GpgpuClient(running.url, CLIENT) as gp:
        events = list(gp.follow("job-1", after=2))

    assert [e.seq for e in events] == list(range(3, 12))
    assert running.ws_subscribes == [
        {"jobId": "job-1", "after": 2},
        {"jobId": "job-1", "after": 6},
    ]


def test_a_stream_that_does_not_come_back_gives_up_after_the_window(running: FakeApi) -> None:
    running.drop_after = 3
    running.refuse_reconnects = 503
    seen = []

    with (
        GpgpuClient(running.url, CLIENT, reconnect_window_s=1.0) as gp,
        pytest.raises(ApiUnreachable, match="is `make up` running"),
    ):
        for event in gp.follow("job-1"):
            seen.append(event.seq)

    assert seen == [1, 2, 3]
    assert running.refused >= 2  # it did retry before giving up


def test_a_refused_subscription_is_not_retried(running: FakeApi) -> None:
    running.close_code = 4403
    with GpgpuClient(running.url, CLIENT) as gp, pytest.raises(ApiError, match="forbidden"):
        list(gp.follow("job-1"))
    assert len(running.ws_subscribes) == 1


def test_an_error_message_ends_the_stream(running: FakeApi) -> None:
    with GpgpuClient(running.url, CLIENT) as gp, pytest.raises(ApiError, match="no job nope"):
        list(gp.follow("nope"))


async def test_async_follow_resumes_too(running: FakeApi) -> None:
    running.drop_after = 1
    async with AsyncGpgpuClient(
        running.url, CLIENT, transport=httpx.MockTransport(running.handle)
    ) as gp:
        events = [e async for e in gp.follow("job-1")]

    assert [e.seq for e in events] == list(range(1, 12))
    assert running.ws_subscribes[1] == {"jobId": "job-1", "after": 1}
