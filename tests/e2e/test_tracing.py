"""One trace from the API request to the GPU worker's step, across three processes.

The network runs with GPGPU_TRACING=file:<spans.jsonl>: the API, the control worker and
the provider append their finished spans to the one file; the test follows the parent
ids of the job's spans from the provider's step back to the HTTP request (the step's
assignment carries the control plane's trace context to the agent), and from the API's
spans for the provider's file transfers back to the provider's steps. The traced job's
history then replays with and without the tracing interceptor: tracing adds headers, never
commands.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from temporalio.client import Client
from temporalio.worker import Replayer

from infra import tracing
from tests.e2e.network import Network, network
from tests.support.graphql import SUBMIT
from workflows.job import JobWorkflow

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory,
           temporal_server: str) -> Iterator[tuple[Network, Path]]:
    home = tmp_path_factory.mktemp("tracing")
    spans = home / "spans.jsonl"
    with network(home, temporal_server, [("trace-a", "1xH100:80", "2.0", [])],
                 extra_env={"GPGPU_TRACING": f"file:{spans}"}) as net:
        yield net, spans


def read_spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_one_trace_links_the_request_to_the_gpu_activity(
    traced: tuple[Network, Path], temporal_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    net, path = traced
    net.put("tracy", "in.txt", b"traced input\n")
    result = net.gql(SUBMIT, "tracy", s={
        "name": "traced", "command": "cp in.txt out.txt", "inputs": [{"key": "in.txt"}],
        "outputs": ["out.txt"], "max_price_per_gpu_hour": "4", "timeout": "2m",
    })["submitJob"]
    assert result["__typename"] == "JobSubmitted", result
    job_id = result["job"]["id"]
    net.wait_job(job_id, ("SUCCEEDED",), client="tracy")

    spans = read_spans(path)
    mine = [s for s in spans if s["attributes"].get("gpgpu.job_id") == job_id]
    (start,) = [s for s in mine if s["name"] == "StartWorkflow:JobWorkflow"]
    trace = [s for s in spans if s["trace_id"] == start["trace_id"]]
    by_id = {s["span_id"]: s for s in trace}

    def only(name: str) -> dict[str, Any]:
        found = [s for s in trace if s["name"] == name]
        assert len(found) == 1, (name, [s["name"] for s in trace])
        return found[0]

    def ancestry(span: dict[str, Any]) -> list[str]:
        chain = [f"{span['service']}: {span['name']}"]
        while span["parent_id"] is not None:
            span = by_id[span["parent_id"]]
            chain.append(f"{span['service']}: {span['name']}")
        return chain

    request = only("POST /graphql")
    run_workflow = only("RunWorkflow:JobWorkflow")
    run_activity = only("RunAssignment:execute_job")
    assert request["parent_id"] is None  # the root: the test's request carried no traceparent
    assert request["attributes"]["gpgpu.job_id"] == job_id
    assert request["attributes"]["http.response.status_code"] == 200
    assert start["parent_id"] == request["span_id"]
    assert run_workflow["parent_id"] == start["span_id"]
    assert ancestry(run_activity) == [
        "gpu-worker: RunAssignment:execute_job",
        "control-worker: RunActivity:execute_job",  # the assignment, recorded
        "control-worker: StartActivity:execute_job",
        "api: StartWorkflow:JobWorkflow",
        "api: POST /graphql",
    ]
    assert run_activity["instance"] == "trace-a"
    assert run_activity["attributes"]["gpgpu.job_id"] == job_id
    assert run_activity["end_ns"] > run_activity["start_ns"]
    # Every step of the job hangs in this one trace, on its three processes.
    names = {s["name"] for s in trace}
    assert {"RunAssignment:stage_inputs", "RunAssignment:upload_outputs"} <= names
    assert {s["service"] for s in trace} == {"api", "control-worker", "gpu-worker"}
    # And so do the provider's file transfers: the API serves them inside the activity's
    # trace (the provider sends traceparent on its presigned GET and PUT).
    get = only("GET /storage/{client_id}/{key}")
    put = only("PUT /storage/{client_id}/{key}")
    assert ancestry(get)[:2] == ["api: GET /storage/{client_id}/{key}",
                                 "gpu-worker: RunAssignment:stage_inputs"]
    assert ancestry(put)[:2] == ["api: PUT /storage/{client_id}/{key}",
                                 "gpu-worker: RunAssignment:upload_outputs"]
    assert put["attributes"]["http.response.status_code"] in (200, 201, 204)

    temporal = await Client.connect(temporal_server)
    history = await temporal.get_workflow_handle(f"job-{job_id}").fetch_history()
    converter = net.stack.settings.temporal_converter()  # its payloads are encrypted
    namespace = net.stack.settings.temporal_namespace  # payloads are sealed for it
    plain = await Replayer(workflows=[JobWorkflow], namespace=namespace,
                           data_converter=converter).replay_workflow(history)
    assert plain.replay_failure is None
    # As in a traced control worker, but without making this test process's provider global.
    monkeypatch.setattr(tracing, "_provider", TracerProvider())
    options = tracing.worker_options()
    assert options  # the sandbox passes opentelemetry through
    replayer = Replayer(workflows=[JobWorkflow], interceptors=tracing.interceptors(),
                        namespace=namespace, data_converter=converter, **options)
    assert (await replayer.replay_workflow(history)).replay_failure is None
