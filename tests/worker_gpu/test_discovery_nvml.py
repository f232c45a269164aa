"""NVML code paths against a stand-in for the driver's library.

The real library is exercised by scripts/gpu_check.sh on a GPU machine; these
tests pin down how answers are read on any machine: bytes or str names, the
CUDA version encoding, NotSupported read as None, XID events counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from worker_gpu.discovery import (
    GpuInfo,
    GpuTelemetry,
    NvmlTelemetry,
    NvmlUnavailable,
    discover_nvml,
    read_telemetry_nvml,
)

MIB = 1024 * 1024


@dataclass
class FakeNvml:
    """Two GPUs: GPU 0 answers everything, GPU 1 (older) supports few queries."""

    xid_events: list[tuple[int, int]] = field(default_factory=list)  # (gpu index, xid)
    inits: int = 0
    shutdowns: int = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in dir(self):
            if name.startswith("nvml"):
                monkeypatch.setattr(pynvml, name, getattr(self, name))

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"handle-{index}"

    def nvmlDeviceGetIndex(self, handle: str) -> int:
        return int(handle.rsplit("-", 1)[1])

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"550.54.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetName(self, handle: str) -> str | bytes:
        return "NVIDIA H100 80GB HBM3" if handle == "handle-0" else b"Tesla T4"

    def nvmlDeviceGetUUID(self, handle: str) -> str:
        return f"GPU-{handle}"

    def nvmlDeviceGetMinorNumber(self, handle: str) -> int:
        return 3 if handle == "handle-0" else 0  # /dev/nvidia3, /dev/nvidia0: not the index

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:
        if handle == "handle-0":
            return SimpleNamespace(total=81559 * MIB, used=1200 * MIB)
        return SimpleNamespace(total=15360 * MIB, used=0)

    def _only_gpu0(self, handle: str, value: Any) -> Any:
        if handle != "handle-0":
            raise pynvml.NVMLError_NotSupported()
        return value

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> Any:
        return self._only_gpu0(handle, SimpleNamespace(gpu=87, memory=40))

    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return 64 if handle == "handle-0" else 41

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        return int(self._only_gpu0(handle, 312_456))  # milliwatts

    def nvmlDeviceGetTotalEccErrors(self, handle: str, error_type: int, counter: int) -> int:
        assert error_type == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        assert counter == pynvml.NVML_VOLATILE_ECC
        return int(self._only_gpu0(handle, 0))

    def nvmlEventSetCreate(self) -> str:
        return "event-set"

    def nvmlDeviceRegisterEvents(self, handle: str, types: int, event_set: str) -> None:
        assert types == pynvml.nvmlEventTypeXidCriticalError
        self._only_gpu0(handle, None)

    def nvmlEventSetWait(self, event_set: str, timeout_ms: int) -> Any:
        assert timeout_ms == 0, "reading telemetry must never block"
        if not self.xid_events:
            raise pynvml.NVMLError_Timeout()
        index, xid = self.xid_events.pop(0)
        return SimpleNamespace(device=f"handle-{index}", eventData=xid)

    def nvmlEventSetFree(self, event_set: str) -> None:
        pass


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml()
    fake.install(monkeypatch)
    return fake


def test_discovery_reads_every_gpu(nvml: FakeNvml) -> None:
    assert discover_nvml() == [
        GpuInfo(0, "NVIDIA H100 80GB HBM3", 81559, "GPU-handle-0", "550.54.15", "12.4", minor=3),
        GpuInfo(1, "Tesla T4", 15360, "GPU-handle-1", "550.54.15", "12.4", minor=0),
    ]
    assert nvml.inits == nvml.shutdowns == 1


def test_unsupported_readings_are_none_not_a_crash(nvml: FakeNvml) -> None:
    assert read_telemetry_nvml() == [
        GpuTelemetry(0, 87, 1200, 64, 312.5, 0, None),
        GpuTelemetry(1, None, 0, 41, None, None, None),
    ]


def test_xid_events_are_counted_between_reads(nvml: FakeNvml) -> None:
    with NvmlTelemetry() as telemetry:
        assert [t.xid_errors for t in telemetry.read()] == [0, None]
        nvml.xid_events += [(0, 79), (0, 48)]
        assert [t.xid_errors for t in telemetry.read()] == [2, None]
        assert [t.xid_errors for t in telemetry.read()] == [2, None]
    assert nvml.inits == nvml.shutdowns


def test_a_driver_without_gpus_is_unavailable(
    nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 0)

    with pytest.raises(NvmlUnavailable, match="reports no GPUs"):
        discover_nvml()


def test_a_driver_not_loaded_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def init() -> None:
        raise pynvml.NVMLError_DriverNotLoaded()

    monkeypatch.setattr(pynvml, "nvmlInit", init)

    with pytest.raises(NvmlUnavailable, match=r"^NVML: Driver Not Loaded$"):
        discover_nvml()
