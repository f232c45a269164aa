"""The GPGPU Python SDK and the `gpgpu` CLI."""

from client.aio import AsyncGpgpuClient
from client.errors import (
    ApiError,
    ApiUnreachable,
    BadInput,
    GpgpuError,
    IntegrityError,
    NotFoundError,
    RefusedError,
    SpecRejectedError,
)
from client.models import Account, Gpu, Job, JobEvent, OutputFile, Provider, StoredObject
from client.sdk import GpgpuClient

__all__ = [
    "Account",
    "ApiError",
    "ApiUnreachable",
    "AsyncGpgpuClient",
    "BadInput",
    "GpgpuClient",
    "GpgpuError",
    "Gpu",
    "IntegrityError",
    "Job",
    "JobEvent",
    "NotFoundError",
    "OutputFile",
    "Provider",
    "RefusedError",
    "SpecRejectedError",
    "StoredObject",
]
