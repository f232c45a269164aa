"""What GPUs this provider has and how they are doing: NVML, or GPUs declared for development.

Declared (simulated) GPUs report only what is true of them: a GPU is 100% busy
while a job holds it and idle otherwise; everything a real sensor would measure
is None rather than an invented number.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

import pynvml

log = logging.getLogger(__name__)

T = TypeVar("T")

# Hard limit on declared GPUs, so that a typo ("200xH100") is refused, not registered.
MAX_SIMULATED_GPUS = 64

_DECLARATION = re.compile(r"^(\d+)\s*[xX]\s*([A-Za-z0-9][A-Za-z0-9_.\-]*)\s*:\s*(\d+)$")

# NVML answers that mean "this device cannot tell you that", not "something is wrong".
_UNANSWERABLE = (
    pynvml.NVMLError_NotSupported,
    pynvml.NVMLError_NoPermission,
    pynvml.NVMLError_FunctionNotFound,
)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    model: str
    memory_mb: int
    uuid: str
    driver_version: str = ""
    cuda_version: str = ""
    # The device minor number (/dev/nvidiaN) NVML reports; None for a simulated GPU. A job's
    # sandbox gets the device nodes of its own GPUs only (worker_gpu/sandbox.py gpu_binds).
    minor: int | None = None


@dataclass
class GpuTelemetry:
    index: int
    utilization_pct: int | None = None
    memory_used_mb: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    ecc_errors: int | None = None  # volatile uncorrected ECC errors since the driver loaded
    xid_errors: int | None = None  # critical XID events seen since the agent started watching


class NvmlUnavailable(RuntimeError):
    """No usable NVIDIA driver here; the message is the one-line reason."""


def _text(value: str | bytes) -> str:
    # Older nvidia-ml-py releases return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else value


def _cuda_version_text(version: int) -> str:
    # NVML encodes CUDA 12.4 as 12040.
    return f"{version // 1000}.{(version % 1000) // 10}"


def _init_nvml() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        hint = " (libnvidia-ml.so.1)" if isinstance(err, pynvml.NVMLError_LibraryNotFound) else ""
        raise NvmlUnavailable(f"NVML: {err}{hint}") from None


def _optional(call: Callable[[], T]) -> T | None:
    try:
        return call()
    except _UNANSWERABLE:
        return None


def _minor(handle: object) -> int | None:
    """The device minor number (/dev/nvidiaN), or None where NVML does not tell it."""
    found = _optional(lambda: pynvml.nvmlDeviceGetMinorNumber(handle))
    return None if found is None else int(found)


def discover_nvml() -> list[GpuInfo]:
    """The GPUs the NVIDIA driver reports, or NvmlUnavailable saying why there are none."""
    _init_nvml()
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            raise NvmlUnavailable("NVML: the driver is loaded but reports no GPUs")
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda_raw = _optional(pynvml.nvmlSystemGetCudaDriverVersion)
        cuda = _cuda_version_text(cuda_raw) if cuda_raw else ""
        gpus = []
        for index in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    model=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_mb=int(memory.total) // (1024 * 1024),
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    driver_version=driver,
                    cuda_version=cuda,
                    minor=_minor(handle),
                )
            )
        return gpus
    except pynvml.NVMLError as err:
        raise NvmlUnavailable(f"NVML: {err}") from None
    finally:
        pynvml.nvmlShutdown()


class NvmlTelemetry:
    """Reads GPU sensors through NVML; keeps NVML open to count XID events between reads.

    XID events are only delivered to an event set that exists when they happen,
    so the count is "since this object was made", and None where the device or
    driver does not deliver them.
    """

    def __init__(self) -> None:
        _init_nvml()
        self._handles: list[Any] = [
            pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
        ]
        self._xids: dict[int, int] = {}
        self._events: Any = None
        try:
            self._events = pynvml.nvmlEventSetCreate()
            for index, handle in enumerate(self._handles):
                try:
                    pynvml.nvmlDeviceRegisterEvents(
                        handle, pynvml.nvmlEventTypeXidCriticalError, self._events
                    )
                    self._xids[index] = 0
                except _UNANSWERABLE:
                    pass
        except _UNANSWERABLE:
            self._events = None

    def close(self) -> None:
        if self._events is not None:
            pynvml.nvmlEventSetFree(self._events)
            self._events = None
        pynvml.nvmlShutdown()

    def __enter__(self) -> NvmlTelemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drain_xid_events(self) -> None:
        if self._events is None:
            return
        while True:
            try:
                data = pynvml.nvmlEventSetWait(self._events, 0)
            except pynvml.NVMLError_Timeout:
                return
            index = pynvml.nvmlDeviceGetIndex(data.device)
            self._xids[index] = self._xids.get(index, 0) + 1
            log.warning("GPU %d reported XID %d", index, data.eventData)

    def read(self) -> list[GpuTelemetry]:
        self._drain_xid_events()
        return [self._read_one(i, h) for i, h in enumerate(self._handles)]

    def _read_one(self, index: int, handle: Any) -> GpuTelemetry:
        utilization = _optional(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle))
        memory = _optional(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
        power_mw = _optional(lambda: pynvml.nvmlDeviceGetPowerUsage(handle))
        return GpuTelemetry(
            index=index,
            utilization_pct=int(utilization.gpu) if utilization is not None else None,
            memory_used_mb=int(memory.used) // (1024 * 1024) if memory is not None else None,
            temperature_c=_optional(
                lambda: int(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
            ),
            power_w=round(power_mw / 1000, 1) if power_mw is not None else None,
            ecc_errors=_optional(
                lambda: int(
                    pynvml.nvmlDeviceGetTotalEccErrors(
                        handle,
                        pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                        pynvml.NVML_VOLATILE_ECC,
                    )
                )
            ),
            xid_errors=self._xids.get(index),
        )


def read_telemetry_nvml() -> list[GpuTelemetry]:
    """One reading of every GPU. A one-shot read cannot count XID events: use NvmlTelemetry."""
    with NvmlTelemetry() as telemetry:
        readings = telemetry.read()
    for reading in readings:
        reading.xid_errors = None
    return readings


def parse_simulated(spec: str, namespace: str = "") -> list[GpuInfo]:
    """Declared GPUs: "2xH100:80" or "1xA100:40,1xRTX4090:24" (count x model : memory GB).

    `namespace` (the provider id) makes the made-up UUIDs differ between
    providers and stay the same across restarts of one provider.
    """
    parts = [part.strip() for part in spec.split(",")]
    if not spec.strip():
        raise ValueError("no GPUs declared: expected COUNTxMODEL:MEMORY_GB, e.g. 2xH100:80")
    gpus: list[GpuInfo] = []
    for part in parts:
        match = _DECLARATION.match(part)
        if not match:
            raise ValueError(
                f"bad GPU declaration {part!r} in {spec!r}: "
                "expected COUNTxMODEL:MEMORY_GB, e.g. 2xH100:80"
            )
        count, model, memory_gb = int(match[1]), match[2], int(match[3])
        if count < 1:
            raise ValueError(f"bad GPU declaration {part!r}: count must be at least 1")
        if memory_gb < 1:
            raise ValueError(f"bad GPU declaration {part!r}: memory must be at least 1 GB")
        for _ in range(count):
            index = len(gpus)
            name = uuid.uuid5(uuid.NAMESPACE_URL, f"gpgpu-simulated/{namespace}/{index}/{model}")
            gpus.append(GpuInfo(index, model, memory_gb * 1024, f"SIM-{name}"))
    if len(gpus) > MAX_SIMULATED_GPUS:
        raise ValueError(f"{spec!r} declares {len(gpus)} GPUs; at most {MAX_SIMULATED_GPUS}")
    return gpus


def simulated_telemetry(gpus: list[GpuInfo], busy: Collection[int]) -> list[GpuTelemetry]:
    return [
        GpuTelemetry(index=g.index, utilization_pct=100 if g.index in busy else 0) for g in gpus
    ]
