"""What GPGPU adds to OpenTelemetry's SDK: the job id on spans, and a JSON-lines span file.

Imported only when tracing is on (infra/tracing.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from infra.logs import job_id_of
from infra.tracing import FILE, OTLP, check

JOB_ID = "gpgpu.job_id"
# temporalio's TracingInterceptor puts the workflow id on each of its spans.
WORKFLOW_ID = "temporalWorkflowID"


def tracer_provider(mode: str, service: str, instance: str | None = None) -> TracerProvider:
    """A provider for `mode`: `otlp` batches to the OTLP endpoint, `file:PATH` writes each
    span as it ends (nothing is lost to a process that exits abruptly)."""
    attributes: dict[str, Any] = {SERVICE_NAME: service}
    if instance:
        attributes[SERVICE_INSTANCE_ID] = instance
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(JobIdProcessor())
    if check(mode) == OTLP:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise RuntimeError(
                "GPGPU_TRACING=otlp needs the OTLP exporter: pip install 'gpgpu[otlp]'"
            ) from None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        path = Path(mode.removeprefix(FILE))
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
    return provider


class JobIdProcessor(SpanProcessor):
    """`gpgpu.job_id` on every span about a job's workflow; and on the request span that
    started it (a local server span without one), which only then learns which job it made."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        workflow_id = (span.attributes or {}).get(WORKFLOW_ID)
        job_id = job_id_of(workflow_id) if isinstance(workflow_id, str) else None
        if job_id is None:
            return
        span.set_attribute(JOB_ID, job_id)
        parent = trace.get_current_span(parent_context)
        if (
            isinstance(parent, ReadableSpan)
            and parent.is_recording()
            and parent.kind == trace.SpanKind.SERVER
            and JOB_ID not in (parent.attributes or {})
        ):
            parent.set_attribute(JOB_ID, job_id)


class JsonLinesExporter(SpanExporter):
    """One JSON object per finished span, appended to `path`. The API, the control worker
    and the GPU workers may share one file: each line is one O_APPEND write."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._fd is None:
            return SpanExportResult.FAILURE
        data = "".join(json.dumps(span_line(s), default=str) + "\n" for s in spans)
        try:
            os.write(self._fd, data.encode())
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_line(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None  # a finished SDK span always has one
    resource = span.resource.attributes
    line: dict[str, Any] = {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": resource.get(SERVICE_NAME),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }
    if SERVICE_INSTANCE_ID in resource:
        line["instance"] = resource[SERVICE_INSTANCE_ID]
    return line
