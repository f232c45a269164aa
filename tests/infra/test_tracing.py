"""GPGPU_TRACING: the span file, the job id on spans, the OTLP export, and off meaning off.

The whole path across processes is tests/e2e/test_tracing.py; here each provider is made
without being installed globally, so this test process keeps no tracing state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from infra.settings import Settings
from infra.spans import tracer_provider
from infra.tracing import check

ROOT = Path(__file__).resolve().parents[2]


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_setting_takes_off_otlp_or_a_file() -> None:
    assert [check(v) for v in ("off", "otlp", "file:/tmp/s.jsonl")] == [
        "off", "otlp", "file:/tmp/s.jsonl"
    ]
    assert Settings().tracing == "off"
    for bad in ("on", "file:", "jaeger"):
        with pytest.raises(ValidationError, match=r"GPGPU_TRACING=.*use off, otlp or file:"):
            Settings(tracing=bad)


def test_a_span_file_line_per_span_with_the_job_on_the_request(tmp_path: Path) -> None:
    path = tmp_path / "made" / "here" / "spans.jsonl"
    provider = tracer_provider(f"file:{path}", "api")
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("POST /graphql", kind=SpanKind.SERVER):
        with tracer.start_as_current_span(
            "StartWorkflow:JobWorkflow", kind=SpanKind.CLIENT,
            attributes={"temporalWorkflowID": "job-j1"},
        ):
            pass
        with tracer.start_as_current_span(  # a second start in the request: the first job stays
            "StartWorkflow:JobWorkflow", attributes={"temporalWorkflowID": "job-j2"},
        ):
            pass
        with tracer.start_as_current_span(
            "StartWorkflow:Other", attributes={"temporalWorkflowID": "node-n1"},
        ):
            pass
    provider.shutdown()

    first, second, other, request = lines(path)  # in the order they ended
    assert request["name"] == "POST /graphql" and request["kind"] == "SERVER"
    assert request["parent_id"] is None and request["service"] == "api"
    assert request["attributes"] == {"gpgpu.job_id": "j1"}
    assert first["parent_id"] == second["parent_id"] == other["parent_id"] == request["span_id"]
    assert {first["trace_id"], second["trace_id"], other["trace_id"]} == {request["trace_id"]}
    assert len(request["trace_id"]) == 32 and len(request["span_id"]) == 16
    assert first["attributes"] == {"temporalWorkflowID": "job-j1", "gpgpu.job_id": "j1"}
    assert second["attributes"]["gpgpu.job_id"] == "j2"
    assert "gpgpu.job_id" not in other["attributes"]
    assert first["start_ns"] <= first["end_ns"] and first["status"] == "UNSET"


def test_processes_sharing_the_file_never_split_a_line(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    providers = [tracer_provider(f"file:{path}", "gpu-worker", f"p{n}") for n in range(4)]

    def spans(n: int) -> None:
        tracer = providers[n].get_tracer("test")
        for i in range(200):
            with tracer.start_as_current_span(f"s{i}", attributes={"pad": "x" * 500}):
                pass

    threads = [threading.Thread(target=spans, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in providers:
        p.shutdown()
    found = lines(path)
    assert len(found) == 800
    assert {s["instance"] for s in found} == {"p0", "p1", "p2", "p3"}


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """A stand-in OTLP/HTTP collector: it keeps what is posted and answers 200."""
    received: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", received
    finally:
        server.shutdown()
        server.server_close()


def test_otlp_sends_the_spans_to_the_standard_endpoint(
    collector: tuple[str, list[tuple[str, bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, received = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    provider = tracer_provider("otlp", "control-worker")
    with provider.get_tracer("test").start_as_current_span(
        "RunWorkflow:JobWorkflow", attributes={"temporalWorkflowID": "job-j9"}
    ):
        pass
    provider.shutdown()  # what a service does before it exits: the batch goes out

    assert [path for path, _ in received] == ["/v1/traces"]
    request = ExportTraceServiceRequest.FromString(received[0][1])
    (resource_spans,) = request.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "control-worker"
    (span,) = resource_spans.scope_spans[0].spans
    assert span.name == "RunWorkflow:JobWorkflow"
    assert {a.key: a.value.string_value for a in span.attributes}["gpgpu.job_id"] == "j9"


def test_off_imports_no_tracing_and_adds_nothing() -> None:
    code = """
import sys
import api.app, infra.temporal, worker_gpu.agent
from infra import tracing
assert tracing.setup("off", "api") is False and not tracing.enabled()
assert tracing.interceptors() == [] and tracing.worker_options() == {}
tracing.shutdown()
loaded = [m for m in sys.modules if m.startswith(("opentelemetry.sdk", "infra.spans",
                                                  "temporalio.contrib.opentelemetry"))]
assert not loaded, loaded
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
