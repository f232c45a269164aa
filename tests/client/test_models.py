from __future__ import annotations

import json

import pytest

from client import _http
from client.errors import ApiError, NotFoundError, SpecRejectedError
from client.models import Job, JobEvent, Provider
from tests.client.fake_api import event_json, job_json

JOB_RESPONSE = {
    "data": {
        "job": {
            **job_json(
                "7f0c",
                "SUCCEEDED",
                providerId="prov-a",
                costMicro=834,
                outputs=[
                    {
                        "path": "out/result.txt",
                        "key": "outputs/7f0c/out/result.txt",
                        "digest": "blake3:" + "ab" * 32,
                        "size": 97,
                    }
                ],
            ),
            "events": [
                event_json(1, "JobSubmitted", "7f0c"),
                event_json(
                    4,
                    "GpusAllocated",
                    "7f0c",
                    provider_id="prov-a",
                    gpu_indexes=[0, 1],
                    price_per_gpu_hour_micro=2_500_000,
                    attempt=2,
                ),
            ],
        }
    }
}


def test_job_with_outputs_and_events_is_parsed_from_camel_case() -> None:
    data = _http.graphql_data(200, json.dumps(JOB_RESPONSE).encode())
    job = _http.parse_job(data, "7f0c")

    assert job.id == "7f0c"
    assert job.client_id == "alice"
    assert job.state == "SUCCEEDED" and job.terminal
    assert job.provider_id == "prov-a"
    assert job.cost_micro == 834
    assert job.max_cost_micro == 12_500_000
    assert job.queue_position is None
    assert job.outputs[0].key == "outputs/7f0c/out/result.txt"
    assert job.outputs[0].size == 97
    assert [e.seq for e in job.events] == [1, 4]
    allocated = job.events[1]
    assert allocated.job_id == "7f0c"
    assert allocated.data["gpu_indexes"] == [0, 1]
    assert not allocated.terminal


def test_event_data_sent_as_a_json_string_is_decoded() -> None:
    raw = event_json(3, "JobFailed", reason="exit code 1")
    raw["data"] = json.dumps(raw["data"])

    event = JobEvent.from_json(raw)

    assert event.data == {"reason": "exit code 1"}
    assert event.terminal


def test_unknown_job_is_not_found() -> None:
    with pytest.raises(NotFoundError, match="job nope not found"):
        _http.parse_job({"job": None}, "nope")


def test_graphql_errors_become_api_errors_with_the_messages() -> None:
    body = {"data": None, "errors": [{"message": "Cannot query field 'x' on type 'Job'."}]}
    with pytest.raises(ApiError, match="Cannot query field 'x'"):
        _http.graphql_data(200, json.dumps(body).encode())


def test_http_error_detail_is_read_from_fastapi_answers() -> None:
    with pytest.raises(ApiError) as caught:
        _http.graphql_data(403, b'{"detail": "not your storage"}')
    assert (caught.value.status, caught.value.detail) == (403, "not your storage")
    with pytest.raises(ApiError, match=r"query\.limit: too big"):
        _http.check_status(422, b'{"detail": [{"loc": ["query", "limit"], "msg": "too big"}]}')
    with pytest.raises(ApiError, match="Bad Gateway"):
        _http.check_status(502, b"Bad Gateway")


def test_submit_result_union() -> None:
    submitted = {"submitJob": {"__typename": "JobSubmitted", "job": job_json("j1")}}
    assert _http.parse_submit(submitted).id == "j1"

    rejected = {
        "submitJob": {
            "__typename": "SpecRejected",
            "errors": [{"field": "resources.gpus", "message": "no provider has 64 GPUs"}],
        }
    }
    with pytest.raises(SpecRejectedError) as caught:
        _http.parse_submit(rejected)
    assert caught.value.errors == [("resources.gpus", "no provider has 64 GPUs")]
    assert str(caught.value.with_source("job.yaml")) == (
        "job.yaml: resources.gpus: no provider has 64 GPUs"
    )


def test_provider_and_gpus() -> None:
    provider = Provider.from_json(
        {
            "providerId": "prov-a",
            "region": "eu-west",
            "status": "ONLINE",
            "lastHeartbeatAt": None,
            "reputation": 0.75,
            "earningsMicro": 793,
            "gpus": [{"index": 0, "model": "A100", "memoryMb": 81920, "busyJobId": "j1"}],
        }
    )
    assert provider.gpus[0].memory_mb == 81920
    assert provider.gpus[0].busy_job_id == "j1"
    assert provider.reputation == 0.75


def test_job_without_optional_fields() -> None:
    job = Job.from_json({k: v for k, v in job_json().items() if k not in ("outputs", "events")})
    assert job.outputs == [] and job.events == [] and not job.terminal
