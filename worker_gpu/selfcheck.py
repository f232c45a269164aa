"""`python -m worker_gpu.selfcheck`: does this machine's GPU path work end to end?

NVML discovery and telemetry as the agent reads them, then tiny CUDA jobs run
through ProcessRuntime exactly as a client's job would be. It needs only
nvidia-ml-py, not the rest of the stack, so it runs on a bare GPU machine.
Exit status 0 when every required check passed.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from worker_gpu.discovery import (
    GpuInfo,
    GpuTelemetry,
    NvmlTelemetry,
    NvmlUnavailable,
    discover_nvml,
)
from worker_gpu.runtime import RunOutcome
from worker_gpu.runtime_process import ProcessRuntime

# A CUDA job without any framework: the driver API through ctypes. It reports
# what CUDA_VISIBLE_DEVICES lets it see and, given a device, allocates 256 MiB,
# fills it on the GPU and reads some back.
CUDA_PROBE = r"""
import ctypes, os, sys
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError as err:
    print("libcuda.so.1 not loadable:", err); sys.exit(3)
def check(what, rc):
    if rc != 0:
        name = ctypes.c_char_p()
        cuda.cuGetErrorName(rc, ctypes.byref(name))
        print(what, "failed:", rc, (name.value or b"").decode()); sys.exit(4)
rc = cuda.cuInit(0)
if rc == 100 or not os.path.exists("/dev/nvidiactl"):  # no device, or a sandbox without GPUs
    print("visible devices: 0"); sys.exit(0)
check("cuInit", rc)
count = ctypes.c_int()
check("cuDeviceGetCount", cuda.cuDeviceGetCount(ctypes.byref(count)))
print("visible devices:", count.value)
for i in range(count.value):
    dev = ctypes.c_int()
    check("cuDeviceGet", cuda.cuDeviceGet(ctypes.byref(dev), i))
    name = ctypes.create_string_buffer(100)
    check("cuDeviceGetName", cuda.cuDeviceGetName(name, 100, dev))
    print("device", i, name.value.decode())
if count.value:
    dev = ctypes.c_int()
    check("cuDeviceGet", cuda.cuDeviceGet(ctypes.byref(dev), 0))
    ctx = ctypes.c_void_p()
    check("cuDevicePrimaryCtxRetain", cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev))
    check("cuCtxSetCurrent", cuda.cuCtxSetCurrent(ctx))
    size = 256 * 1024 * 1024
    ptr = ctypes.c_uint64()
    check("cuMemAlloc", cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(size)))
    check("cuMemsetD8", cuda.cuMemsetD8_v2(ptr, ctypes.c_ubyte(7), ctypes.c_size_t(size)))
    check("cuCtxSynchronize", cuda.cuCtxSynchronize())
    host = (ctypes.c_ubyte * 8)()
    check("cuMemcpyDtoH", cuda.cuMemcpyDtoH_v2(host, ptr, ctypes.c_size_t(8)))
    print("256 MiB set on the GPU, read back:", list(host))
    check("cuMemFree", cuda.cuMemFree_v2(ptr))
    cuda.cuDevicePrimaryCtxRelease_v2(dev)
"""

TORCH_PROBE = (
    "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), "
    "torch.cuda.device_count()); x = torch.ones(1024, 1024, device='cuda'); "
    "print('matmul sum', float((x @ x).sum()))"
)


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def print_table(gpus: list[GpuInfo], readings: list[GpuTelemetry]) -> None:
    by_index = {r.index: r for r in readings}
    rows = [("idx", "model", "MiB", "driver", "CUDA", "util%", "temp C", "power W", "ECC", "XID")]
    for gpu in gpus:
        t = by_index.get(gpu.index, GpuTelemetry(gpu.index))
        rows.append(
            (
                str(gpu.index), gpu.model, str(gpu.memory_mb), gpu.driver_version,
                gpu.cuda_version, _cell(t.utilization_pct), _cell(t.temperature_c),
                _cell(t.power_w), _cell(t.ecc_errors), _cell(t.xid_errors),
            )
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


# What a sandboxed job given one GPU finds of the machine's: the NVIDIA nodes in its /dev,
# the GPUs NVML lists (nvidia-smi), and the devices CUDA opens.
ISOLATION_PROBE = (
    "ls /dev | grep '^nvidia[0-9]' | sed 's/^/node /'; "
    "command -v nvidia-smi >/dev/null && nvidia-smi -L | sed 's/^/smi /'; "
    "unset CUDA_VISIBLE_DEVICES; python3 -c \"$CUDA_PROBE\""
)


HAS_TORCH = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"


def isolation_failures(runtime: ProcessRuntime, gpus: list[GpuInfo], root: Path) -> list[str]:
    """Each GPU given alone to a sandboxed job, which unsets CUDA_VISIBLE_DEVICES to see the
    others: it must find that GPU's node only, NVML must list that GPU only, CUDA must open
    one device."""
    failures = []
    for gpu in gpus:
        title = f"isolation of GPU {gpu.index}"
        outcome = runtime.run(
            ["sh", "-c", ISOLATION_PROBE], root / title.replace(" ", "-"), [gpu.index], 120,
            {"CUDA_PROBE": CUDA_PROBE},
        )
        lines = outcome.log_tail.splitlines()
        print(f"\n[{title}] minor {gpu.minor} exit={outcome.exit_code}")
        print("  " + "\n  ".join(lines))
        nodes = [line.split()[1] for line in lines if line.startswith("node ")]
        listed = [line for line in lines if line.startswith("smi ")]
        if nodes != [f"nvidia{gpu.minor}"]:
            failures.append(f"GPU {gpu.index}: the sandbox holds nodes {nodes}")
        if shutil.which("nvidia-smi") and (len(listed) != 1 or gpu.uuid not in listed[0]):
            failures.append(f"GPU {gpu.index}: nvidia-smi in the sandbox lists {listed}")
        if "visible devices: 1" not in outcome.log_tail:
            failures.append(f"GPU {gpu.index}: CUDA in the sandbox does not see exactly one")
    return failures


def run_job(
    runtime: ProcessRuntime, title: str, command: list[str], gpu_indexes: list[int], root: Path
) -> RunOutcome:
    outcome = runtime.run(command, root / title.replace(" ", "-"), gpu_indexes, 120, {})
    print(
        f"\n[{title}] CUDA_VISIBLE_DEVICES={','.join(map(str, gpu_indexes))!r} "
        f"exit={outcome.exit_code} timed_out={outcome.timed_out} wall={outcome.wall_ms} ms"
    )
    print("  " + outcome.log_tail.strip().replace("\n", "\n  "))
    return outcome


def main() -> int:
    try:
        gpus = discover_nvml()
    except NvmlUnavailable as err:
        print(f"no NVIDIA GPU usable here: {err}")
        return 2
    with NvmlTelemetry() as telemetry:
        readings = telemetry.read()
    print_table(gpus, readings)

    failures: list[str] = []
    runtime = ProcessRuntime(gpus=gpus)
    with tempfile.TemporaryDirectory(prefix="gpgpu-selfcheck-") as tmp:
        root = Path(tmp)
        smi = shutil.which("nvidia-smi")
        if smi:
            query = [smi, "--query-gpu=index,name,memory.used", "--format=csv"]
            if run_job(runtime, "nvidia-smi", query, [0], root).exit_code != 0:
                failures.append("nvidia-smi")
        else:
            print("\n[nvidia-smi] not on PATH; skipped")

        # The system's python: the job runs in the sandbox, which shows /usr, not this venv.
        probe = ["python3", "-c", CUDA_PROBE]
        one = run_job(runtime, "cuda on GPU 0", probe, [0], root)
        if one.exit_code != 0 or "visible devices: 1" not in one.log_tail:
            failures.append("CUDA job on GPU 0")
        none = run_job(runtime, "cuda with no GPU", probe, [], root)
        if none.exit_code != 0 or "visible devices: 0" not in none.log_tail:
            failures.append("CUDA_VISIBLE_DEVICES='' must hide every GPU")

        # A job given one GPU reaches no other, whatever CUDA_VISIBLE_DEVICES it sets.
        failures += isolation_failures(runtime, gpus, root)

        # Torch as a job finds it: the sandbox's python3 (the system's), which may lack the
        # torch of the python running this check (a venv under /opt is not in its view).
        has_torch = runtime.run(["python3", "-c", HAS_TORCH], root / "has-torch", [], 60, {})
        if has_torch.exit_code == 0:
            torch_job = run_job(runtime, "torch", ["python3", "-c", TORCH_PROBE], [0], root)
            if torch_job.exit_code != 0:
                failures.append("torch")
        else:
            print("\n[torch] the sandbox's python3 has no torch; skipped")

    print("\nselfcheck:", ("FAILED: " + ", ".join(failures)) if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
