"""A job's sandbox holds the device nodes of its own GPUs only: no GPU of the provider that
it was not given, whatever it sets CUDA_VISIBLE_DEVICES to.

No GPU here: the machine's /dev and the driver's /proc entries are fake directories, and
the sandbox (real bubblewrap) binds the fake nodes as it binds real ones. On a GPU machine
`scripts/gpu_check.sh` (worker_gpu/selfcheck.py) checks the same with the real driver.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from worker_gpu.discovery import GpuInfo
from worker_gpu.runtime_docker import ContainerLimits, DockerRuntime
from worker_gpu.runtime_process import ProcessRuntime
from worker_gpu.sandbox import NVIDIA_PROC_GPUS, Bwrap, SandboxUnavailable, gpu_binds
from worker_gpu.selfcheck import isolation_failures

# Four GPUs whose minor numbers are not their NVML indexes (as on many machines).
GPUS = [GpuInfo(i, "H100", 81559, f"GPU-uuid-{i}", minor=m) for i, m in enumerate([2, 0, 3, 1])]
BUS = {0: "0000:1b:00.0", 1: "0000:3b:00.0", 2: "0000:5e:00.0", 3: "0000:86:00.0"}  # by minor


def fake_machine(root: Path, with_modeset: bool = True) -> tuple[Path, Path]:
    """A /dev with the driver's nodes and four GPUs', and /proc/driver/nvidia/gpus."""
    dev, proc = root / "dev", root / "proc-gpus"
    dev.mkdir(mode=0o755)
    shared = ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"] + (["nvidia-modeset"] * with_modeset)
    for name in [*shared, *(f"nvidia{m}" for m in BUS), "nvidia-caps", "null"]:
        (dev / name).write_text(name)
    for minor, bus in BUS.items():
        (proc / bus).mkdir(parents=True)
        (proc / bus / "information").write_text(
            f"Model: \t\t NVIDIA H100\nIRQ:   \t\t 42\nDevice Minor: \t {minor}\n"
            "Bus Type: \t PCIe\n"
        )
    return dev, proc


@pytest.fixture
def machine() -> Iterator[Path]:
    """A folder the sandbox's user (nobody, when the agent is root) may read, as /dev is."""
    root = Path(tempfile.mkdtemp(prefix="gpgpu-fake-gpus-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bound(args: list[str], flag: str) -> list[tuple[str, str]]:
    return [(args[i + 1], args[i + 2]) for i, a in enumerate(args) if a == flag]


def test_only_the_shared_nodes_and_the_assigned_gpus_nodes_are_bound(tmp_path: Path) -> None:
    dev, proc = fake_machine(tmp_path)
    args = gpu_binds([3, 0], dev, proc)

    assert [inside for _, inside in bound(args, "--dev-bind")] == [
        "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset",
        "/dev/nvidia0", "/dev/nvidia3",
    ]
    assert all(src == str(dev / Path(inside).name) for src, inside in bound(args, "--dev-bind"))
    # NVML inside lists the driver's /proc entries: only those of the job's GPUs are there.
    assert args[args.index("--tmpfs") + 1] == NVIDIA_PROC_GPUS
    assert bound(args, "--ro-bind") == [
        (str(proc / BUS[0]), f"{NVIDIA_PROC_GPUS}/{BUS[0]}"),
        (str(proc / BUS[3]), f"{NVIDIA_PROC_GPUS}/{BUS[3]}"),
    ]
    assert args[-2:] == ["--remount-ro", NVIDIA_PROC_GPUS]
    assert args.index("--tmpfs") < args.index("--ro-bind")


def test_a_job_without_gpus_gets_no_nvidia_node_at_all(tmp_path: Path) -> None:
    dev, proc = fake_machine(tmp_path)
    assert gpu_binds([], dev, proc) == []


def test_absent_shared_nodes_are_skipped_and_a_missing_gpu_node_refused(tmp_path: Path) -> None:
    dev, proc = fake_machine(tmp_path, with_modeset=False)
    (dev / "nvidia-uvm-tools").unlink()
    inside = [i for _, i in bound(gpu_binds([1], dev, proc), "--dev-bind")]
    assert inside == ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia1"]
    (dev / "nvidia1").unlink()
    with pytest.raises(SandboxUnavailable, match="nvidia1"):
        gpu_binds([1], dev, proc)


def test_no_driver_proc_entries_no_proc_mounts(tmp_path: Path) -> None:
    dev, _ = fake_machine(tmp_path)
    args = gpu_binds([0], dev, tmp_path / "absent")
    assert "--tmpfs" not in args and "--ro-bind" not in args


@pytest.mark.skipif(not Bwrap.installed(), reason="bubblewrap is not installed")
def test_a_sandboxed_job_sees_only_its_own_gpus_nodes(tmp_path: Path, machine: Path) -> None:
    dev, _ = fake_machine(machine)
    bwrap = Bwrap()
    bwrap.dev, bwrap.proc_gpus = dev, tmp_path / "no-driver-here"
    runtime = ProcessRuntime(kill_grace_s=0.5, tick_s=0.2, bwrap=bwrap, gpus=GPUS)
    work = tmp_path / "work"
    work.mkdir()
    # GPU index 2 is minor 3; the job asks for every GPU by index and reads what it has.
    script = ("ls /dev | grep nvidia; echo CVD=$CUDA_VISIBLE_DEVICES; "
              "for n in 0 1 2 3; do cat /dev/nvidia$n 2>/dev/null && echo; done")
    outcome = runtime.run(["sh", "-c", script], work, [2], 30,
                          {"CUDA_VISIBLE_DEVICES": "0,1,2,3"})

    assert outcome.exit_code == 0, outcome.log_tail
    lines = outcome.log_tail.split()
    nodes = sorted(n for n in lines if n.startswith("nvidia") and "=" not in n)
    assert "CVD=GPU-uuid-2" in lines  # named by UUID; the job's own value ignored
    # What `ls` lists, and the one GPU node it could read (the fake node's content).
    assert nodes == sorted(["nvidia-modeset", "nvidia-uvm", "nvidia-uvm-tools", "nvidia3",
                            "nvidiactl", "nvidia3"])


@pytest.mark.skipif(not Bwrap.installed(), reason="bubblewrap is not installed")
def test_simulated_gpus_bind_nothing_and_keep_their_indexes(
    tmp_path: Path, machine: Path
) -> None:
    dev, _ = fake_machine(machine)
    bwrap = Bwrap()
    bwrap.dev = dev
    simulated = [GpuInfo(i, "H100", 81559, f"SIM-{i}") for i in range(2)]
    runtime = ProcessRuntime(kill_grace_s=0.5, tick_s=0.2, bwrap=bwrap, gpus=simulated)
    work = tmp_path / "work"
    work.mkdir()
    outcome = runtime.run(["sh", "-c", "ls /dev; echo CVD=$CUDA_VISIBLE_DEVICES"], work, [1],
                          30, {})
    assert outcome.exit_code == 0, outcome.log_tail
    assert "nvidia" not in outcome.log_tail.replace("CVD", "")
    assert "CVD=1" in outcome.log_tail.split()


@pytest.mark.skipif(not Bwrap.installed(), reason="bubblewrap is not installed")
def test_the_gpu_checks_isolation_probe_finds_each_gpus_one_node(
    tmp_path: Path, machine: Path
) -> None:
    dev, _ = fake_machine(machine)
    bwrap = Bwrap()
    bwrap.dev, bwrap.proc_gpus = dev, machine / "no-driver-here"
    runtime = ProcessRuntime(kill_grace_s=0.5, tick_s=0.2, bwrap=bwrap, gpus=GPUS)
    failures = isolation_failures(runtime, GPUS, tmp_path)
    # The nodes part holds here; CUDA (no libcuda on this machine) can only fail here.
    assert failures == [f"GPU {g.index}: CUDA in the sandbox does not see exactly one"
                        for g in GPUS]
    bwrap.dev = dev.parent / "all-nodes-as-one"  # a sandbox that bound the wrong node
    bwrap.dev.mkdir()
    for minor in BUS:
        (bwrap.dev / f"nvidia{minor}").write_text("x")
    wrong = [GpuInfo(0, "H100", 81559, "GPU-uuid-0", minor=0)]
    runtime.devices = {0: GpuInfo(0, "H100", 81559, "GPU-uuid-0", minor=1)}
    assert any("nodes ['nvidia1']" in f for f in isolation_failures(runtime, wrong, tmp_path))


class RecordingEngine:
    """Records what the docker runtime asks the engine to create (no GPU engine here)."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.containers = self

    def create(self, image: str, command: list[str], **kwargs: Any) -> str:
        self.created.append(kwargs)
        return "container"


def test_the_docker_runtime_asks_for_the_assigned_gpus_only(tmp_path: Path) -> None:
    engine = RecordingEngine()
    runtime = DockerRuntime("p1", ContainerLimits.machine_share(4, None, None, 64),
                            client=engine, gpu_devices=True)  # type: ignore[arg-type]
    runtime._create("img", ["true"], tmp_path, [1, 3], {"NVIDIA_VISIBLE_DEVICES": "all"},
                    "65534:65534", "job-1", None, False)
    runtime._create("img", ["true"], tmp_path, [], {}, "65534:65534", "job-2", None, False)

    (request,) = engine.created[0]["device_requests"]
    assert (request.device_ids, request.count) == (["1", "3"], 0)  # not count=-1 (all)
    assert engine.created[0]["environment"]["NVIDIA_VISIBLE_DEVICES"] == "1,3"
    assert engine.created[1]["device_requests"] is None  # no GPU, no device
    assert engine.created[1]["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
