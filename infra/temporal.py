"""The Temporal client: how every process of the control plane connects (the control
worker itself is activities/worker.py)."""

from __future__ import annotations

import asyncio

from temporalio.client import Client
from temporalio.service import TLSConfig

from infra import tracing
from infra.settings import Settings


async def connect(settings: Settings, attempts: int = 60) -> Client:
    """Connect to Temporal, waiting for a server that is still starting. The client (and so
    its workers) encrypts every payload (infra/payload_codec.py); with tracing on, it
    carries the trace in workflow and activity headers."""
    converter = settings.temporal_converter()  # no key: a clear error before any wait
    for n in range(attempts):
        try:
            return await Client.connect(
                settings.temporal_address, namespace=settings.temporal_namespace,
                interceptors=tracing.interceptors(), tls=tls_config(settings),
                data_converter=converter,
            )
        except RuntimeError:
            if n == attempts - 1:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


def tls_config(settings: Settings) -> TLSConfig | bool:
    """mTLS to the frontend when a certificate is configured; plain TCP otherwise (the
    embedded dev server, or an internal network that nothing untrusted can reach)."""
    paths = (settings.temporal_tls_ca, settings.temporal_tls_cert, settings.temporal_tls_key)
    if not any(paths):
        return False
    if bool(settings.temporal_tls_cert) != bool(settings.temporal_tls_key):
        raise ValueError("GPGPU_TEMPORAL_TLS_CERT and GPGPU_TEMPORAL_TLS_KEY go together")
    ca, cert, key = (p.read_bytes() if p else None for p in paths)
    return TLSConfig(server_root_ca_cert=ca, client_cert=cert, client_private_key=key,
                     domain=settings.temporal_tls_server_name)
