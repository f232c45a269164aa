"""Every number that enters the network, bounded: the maxima (protocol/limits.py) as checks.

The API checks a number against its bound where it arrives (a field error naming the
field in the API's words: `pricePerGpuHourMicro: must be at most 1000000000000
micro-credits`), and the domain checks it again in its command methods
(`OutOfBounds`, a DomainError naming the field), so no event holding a value the read
model or a provider cannot represent is ever stored. Every bound keeps the sums the
network makes of it (a cost, a balance, GPU-milliseconds over a week) far inside a
signed 64-bit integer (SQLite's INTEGER, PostgreSQL's BIGINT: 9.2e18).

| quantity | at least | at most |
| --- | --- | --- |
| a price per GPU-hour | 1 | 10^12 micro-credits (a million credits) |
| an amount moved (deposit, grant, escrow) | 0 | 10^17 micro-credits (an escrow: <= 6.5e16) |
| an account's balance | | ±4 x 10^18 micro-credits |
| GPUs a job asks for | 1 | 64 |
| GPUs a provider declares | 1 | 256 |
| a GPU index | 0 | 1023 |
| a GPU's memory | 1 | 4 TiB (4194304 MiB) |
| a timeout | 1 s | 7 days |
| replicas | 1 | 5 |
| priority levels of a queue | 1 | 10 (a job's priority: 0 to 9) |
| GPUs one client may hold in a queue | 0 (no cap) | 1000000 |
| a byte size (an object, staged bytes) | 0 | 2^50 (1 PiB) |
| files of one step | 0 | 4096 |
| GPU-milliseconds of one run | 0 | 64 GPUs x 7 days |
| an exit code | -2^31 | 2^31 - 1 |
| telemetry: utilization | 0 | 100 % |
| telemetry: temperature | 0 | 1000 °C |
| telemetry: power | 0 | 100000 W |
| telemetry: ECC, Xid error counts | 0 | 10^12 |
| a client's verified spend, as an outcome carries it | 0 | 2^53 micro-credits |
| the `outvoted` outcomes a client's jobs caused before, as an outcome carries it | 0 | 10^9 |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from domain.errors import DomainError
from protocol.limits import (
    MAX_AMOUNT_MICRO,
    MAX_BALANCE_MICRO,
    MAX_BYTES,
    MAX_ERROR_COUNT,
    MAX_GPU_INDEX,
    MAX_GPU_MEMORY_MB,
    MAX_GPU_MS,
    MAX_GPUS_PER_CLIENT,
    MAX_JOB_GPUS,
    MAX_OUTVOTES,
    MAX_PRICE_MICRO,
    MAX_PRIORITY_LEVELS,
    MAX_PROVIDER_GPUS,
    MAX_REPLICAS,
    MAX_SPENT_MICRO,
    MAX_STEP_FILES,
    MAX_TIMEOUT_S,
)


class OutOfBounds(DomainError):
    """A number outside its bound: `field` names it, the message says the bound."""


@dataclass(frozen=True)
class Bound:
    low: int | float
    high: int | float
    unit: str  # "" for a count without one (an index, a level)
    whole: bool = True  # an integer; False: a finite float is taken too
    kind: str = ""  # what the number is, for a value that is no number: "a GPU index"

    def problem(self, value: Any) -> str | None:
        """Why `value` is not within the bound, or None."""
        number: int | float
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and not self.whole:
            if not math.isfinite(value):
                return f"must be a finite number{self._of}"
            number = value
        elif self.kind:
            return f"must be {self.kind}, a whole number from {self.low} to {self.high}"
        else:
            return f"must be {'a whole number' if self.whole else 'a number'}{self._of}"
        if number > self.high:
            return f"must be at most {self.high}{self._units}"
        if number < self.low:
            return f"must be at least {self.low}{self._units}"
        return None

    @property
    def _of(self) -> str:
        return f" of {self.unit}" if self.unit else ""

    @property
    def _units(self) -> str:
        return f" {self.unit}" if self.unit else ""

    def check(self, field: str, value: Any) -> Any:
        """`value`, or OutOfBounds naming `field`."""
        if (why := self.problem(value)) is not None:
            raise OutOfBounds(field, why)
        return value


PRICE = Bound(1, MAX_PRICE_MICRO, "micro-credits")
AMOUNT = Bound(0, MAX_AMOUNT_MICRO, "micro-credits")
BALANCE = Bound(-MAX_BALANCE_MICRO, MAX_BALANCE_MICRO, "micro-credits")
JOB_GPUS = Bound(1, MAX_JOB_GPUS, "GPUs")
PROVIDER_GPUS = Bound(1, MAX_PROVIDER_GPUS, "GPUs")
GPU_INDEX = Bound(0, MAX_GPU_INDEX, "", kind="a GPU index")
GPU_MEMORY_MB = Bound(1, MAX_GPU_MEMORY_MB, "MiB")
TIMEOUT_S = Bound(1, MAX_TIMEOUT_S, "seconds")
REPLICAS = Bound(1, MAX_REPLICAS, "replicas")
PRIORITY_LEVELS = Bound(1, MAX_PRIORITY_LEVELS, "levels")
PRIORITY = Bound(0, MAX_PRIORITY_LEVELS - 1, "", kind="a priority level")
GPUS_PER_CLIENT = Bound(0, MAX_GPUS_PER_CLIENT, "GPUs")
BYTES = Bound(0, MAX_BYTES, "bytes")
STEP_FILES = Bound(0, MAX_STEP_FILES, "files")
GPU_MS = Bound(0, MAX_GPU_MS, "GPU-milliseconds")
EXIT_CODE = Bound(-(2**31), 2**31 - 1, "", kind="an exit code")
ATTEMPT = Bound(0, 1_000_000, "", kind="an attempt number")
UTILIZATION_PCT = Bound(0, 100, "%")
TEMPERATURE_C = Bound(0, 1000, "°C")
POWER_W = Bound(0, 100_000, "W", whole=False)
ERROR_COUNT = Bound(0, MAX_ERROR_COUNT, "errors")
SPENT = Bound(0, MAX_SPENT_MICRO, "micro-credits")
OUTVOTES = Bound(0, MAX_OUTVOTES, "outvoted outcomes")

# The read model's and the samples' bound per GPU telemetry field (readmodel/telemetry.py).
TELEMETRY: dict[str, Bound] = {
    "utilization_pct": UTILIZATION_PCT,
    "memory_used_mb": Bound(0, MAX_GPU_MEMORY_MB, "MiB"),
    "temperature_c": TEMPERATURE_C,
    "power_w": POWER_W,
    "ecc_errors": ERROR_COUNT,
    "xid_errors": ERROR_COUNT,
}


def check_gpus(field: str, gpus: Any) -> list[dict[str, Any]]:
    """A provider's declared GPUs: 1 to 256, each with a bounded, distinct index and memory."""
    if not isinstance(gpus, list):
        raise OutOfBounds(field, "must be a list of GPUs")
    PROVIDER_GPUS.check(field, len(gpus))
    for n, gpu in enumerate(gpus):
        if not isinstance(gpu, dict):
            raise OutOfBounds(f"{field}.{n}", "must be a GPU (index, model, memory_mb)")
        GPU_INDEX.check(f"{field}.{n}.index", gpu.get("index"))
        GPU_MEMORY_MB.check(f"{field}.{n}.memory_mb", gpu.get("memory_mb"))
    if len({g["index"] for g in gpus}) != len(gpus):
        raise OutOfBounds(field, "two GPUs have the same index")
    return gpus


def check_step_data(step: str, data: dict[str, Any]) -> None:
    """The numbers a step reports (a provider's figures among them), within their bounds."""
    if step == "inputs_staged":
        STEP_FILES.check("files", data.get("files"))
        BYTES.check("bytes", data.get("bytes"))
    elif step == "execution_finished":
        if data.get("exit_code") is not None:
            EXIT_CODE.check("exit_code", data["exit_code"])
        GPU_MS.check("gpu_ms", data.get("gpu_ms"))
    elif step == "outputs_uploaded":
        manifest = data.get("manifest")
        if not isinstance(manifest, list):
            raise OutOfBounds("manifest", "must be a list of outputs")
        STEP_FILES.check("manifest", len(manifest))
        for n, entry in enumerate(manifest):
            if isinstance(entry, dict) and "size" in entry:
                BYTES.check(f"manifest.{n}.size", entry["size"])
