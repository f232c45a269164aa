"""OpenTelemetry traces from an API request to the GPU activity, when GPGPU_TRACING asks.

`GPGPU_TRACING` (infra/settings.py) is `off` (the default), `otlp` (OTLP over HTTP to
the standard `OTEL_EXPORTER_OTLP_ENDPOINT`, needs `gpgpu[otlp]`) or `file:PATH` (one
JSON line per finished span, infra/spans.py). Each process calls `setup` once with its
service name; its Temporal clients take `interceptors()` (temporalio's TracingInterceptor,
which carries the trace through workflow and activity headers), a worker that runs
workflows takes `worker_options()`, and a provider's file transfers send `headers()`.
Tracing off, all of these are empty and opentelemetry is not even imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from temporalio.contrib.opentelemetry import TracingInterceptor

OFF = "off"
OTLP = "otlp"
FILE = "file:"

_provider: TracerProvider | None = None


def check(mode: str) -> str:
    """`mode` if it is a GPGPU_TRACING value, else a ValueError that names the valid ones."""
    if mode in (OFF, OTLP) or (mode.startswith(FILE) and mode != FILE):
        return mode
    raise ValueError(f"GPGPU_TRACING={mode!r}: use off, otlp or file:/path/spans.jsonl")


def setup(mode: str, service: str, instance: str | None = None) -> bool:
    """Install this process's tracer provider (once); whether tracing is on."""
    global _provider
    if check(mode) == OFF:
        return False
    if _provider is None:
        from opentelemetry import trace

        from infra.spans import tracer_provider

        _provider = tracer_provider(mode, service, instance)
        trace.set_tracer_provider(_provider)  # FastAPI's and temporalio's spans use it
    return True


def enabled() -> bool:
    return _provider is not None


def interceptors() -> list[TracingInterceptor]:
    """For Client.connect (a client's workers get them too) or a Replayer."""
    if _provider is None:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor()]


def worker_options() -> dict[str, Any]:
    """For a Worker that runs workflows: the interceptor's workflow half runs in the
    sandbox and must see the one opentelemetry module, not a re-imported copy."""
    if _provider is None:
        return {}
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

    restrictions = SandboxRestrictions.default.with_passthrough_modules("opentelemetry")
    return {"workflow_runner": SandboxedWorkflowRunner(restrictions=restrictions)}


def headers() -> dict[str, str]:
    """The current span as W3C trace headers (`traceparent`), for an HTTP request this
    process makes outside FastAPI and Temporal (a provider's transfers); {} when off."""
    if _provider is None:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def shutdown() -> None:
    """Export what is still buffered; a service calls it before it exits."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None
