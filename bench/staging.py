"""`python -m bench staging`: staging one input from client storage into a provider's scratch.

The input (`--size-mib`, 1 GiB by default, random bytes) is uploaded for a client
through the real API, then staged the way a provider's stage activity does it:
`worker_gpu.transfer.download_verified` over HTTP from a grant made with
`infra.signing.grant_url` for a run recorded in the API's event store (a job
allocated to a provider, as the control plane records it), checking size and
digest (BLAKE3) while streaming into a
scratch directory. The API runs as a real process (with the Temporal dev server
its lifespan needs), once per storage backend: `filesystem`, and `s3` against a
real Ceph RGW started here (`--skip-s3` to leave it out). In the same run, next
to it, a plain `shutil.copyfile` of the filesystem backend's stored object into
the same scratch directory gives the machine's own figure for those bytes.

Figures, one JSON line each on stdout (progress goes to stderr):

- throughput_mib_per_s {backend: filesystem | s3 | copy}: input size over the time
  from the request to the verified file in place (no fsync, for copy neither).
- ratio_to_copy {backend}: that throughput over the plain copy's (copy's is 1.0).

Fairness: rounds interleave copy, filesystem and s3, so drift hits all alike;
before each measurement the stored object is read once (the filesystem backend's
file is the copy's source: both read from the page cache; RGW keeps objects in
its in-memory OSD) and dirty pages are synced; one untimed staging per backend
warms the API process first. Each figure is the median over `--repeat` rounds
(or the best, with `--stat best`), said in the `stat` label.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from domain.application import Network
from infra.settings import Settings
from infra.signing import Grant, grant_url
from ops.devstack import ROOT, Stack
from ops.launch import free_port, temporal_dev_args, wait_for_http
from protocol.spec import parse_job_spec
from worker_gpu.transfer import digest_file, download_verified, upload_file

BACKENDS = ("filesystem", "s3")
CLIENT_ID = "bench"
KEY = "inputs/staging.bin"
# As worker_gpu.activities.HTTP_TIMEOUT (not imported: that module pulls in the GPU runtimes).
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
JOB_ID, PROVIDER_ID = "bench-staging", "bench-provider"
S3_NOT_INSTALLABLE = 3  # scripts/s3-up.sh: Ceph's packages cannot be installed here
S3_START_LIMIT_S = 600  # a first start may install Ceph from apt

# stage(url, target, digest, size) -> bytes staged: the code path being measured.
StageFn = Callable[[str, Path, str, int], int]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(metric: str, value: float, unit: str, **labels: Any) -> None:
    line = {"bench": "staging", "metric": metric, "value": round(value, 3), "unit": unit, **labels}
    print(json.dumps(line), flush=True)


def make_input(path: Path, size_mib: int) -> None:
    """`size_mib` MiB of random bytes: nothing along the way can compress or dedupe them."""
    with path.open("wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))


def read_through(path: Path) -> None:
    """Read a file once, so the measurement after this one finds it in the page cache."""
    buf = bytearray(8 << 20)
    with path.open("rb", buffering=0) as f:
        while f.readinto(buf):
            pass


# The servers


@dataclass
class Api:
    backend: str
    stack: Stack
    settings: Settings

    @property
    def pid(self) -> int:
        return self.stack.children[-1].proc.pid

    def url(self, method: str, key: str = KEY, digest: str = "", size: int = 0) -> str:
        """A grant of the bench's run (open_run), as prepare_transfers makes them."""
        s = self.settings
        grant = Grant(method, CLIENT_ID, key, int(time.time()) + s.grant_max_s, JOB_ID, 1,
                      PROVIDER_ID, size, digest)
        return grant_url(s.signing_secret, s.api_url, grant)

    @property
    def stored_file(self) -> Path:
        """Where the filesystem backend keeps the object (what FilesystemStore.open reads)."""
        return self.settings.storage_root.resolve() / CLIENT_ID / KEY


def show_logs(stack: Stack) -> None:
    for child in stack.children:
        say(f"--- {child.log} ---\n{child.log.read_text(errors='replace')[-2000:]}")


@contextmanager
def stopping(stack: Stack) -> Iterator[Stack]:
    interrupt = signal.getsignal(signal.SIGINT)
    try:
        yield stack
    except BaseException:
        show_logs(stack)
        raise
    finally:
        stack.stop(quiet=True)
        signal.signal(signal.SIGINT, interrupt)  # Stack.stop ignores Ctrl-C from then on


@contextmanager
def temporal_server(home: Path) -> Iterator[str]:
    """The Temporal dev server the API's lifespan connects to, on free ports."""
    port = free_port()
    stack = Stack(Settings(home=home))
    with stopping(stack):
        stack.spawn_listening("temporal", lambda: temporal_dev_args(
            port, home / "temporal.db", wal=False, search_attributes=False,
        ), "127.0.0.1", port, "the Temporal dev server")  # fmt: skip
        yield f"127.0.0.1:{port}"


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


@contextmanager
def s3_server(where: Path) -> Iterator[dict[str, str]]:
    """A real Ceph RGW (scripts/s3-up.sh); yields its GPGPU_S3_* settings."""
    port = free_port()
    say(f"s3: starting Ceph RGW on 127.0.0.1:{port}")
    try:
        up = subprocess.run(
            ["bash", str(ROOT / "scripts" / "s3-up.sh"), str(where), str(port)],
            capture_output=True, text=True, timeout=S3_START_LIMIT_S,
        )
        said = (up.stdout + up.stderr).strip()[-3000:]
        if up.returncode == S3_NOT_INSTALLABLE:
            raise SystemExit(f"error: no S3 server, Ceph RGW cannot be installed here:\n{said}\n"
                             "pass --skip-s3 to measure the filesystem backend only")
        if up.returncode != 0:
            raise SystemExit(f"error: scripts/s3-up.sh failed (exit {up.returncode}):\n{said}")
        yield read_env_file(where / "s3.env")
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "s3-down.sh"), str(where)],
                       timeout=60, check=False)


@contextmanager
def api_process(backend: str, home: Path, temporal: str, s3_env: dict[str, str] | None = None,
                command: list[str] | None = None) -> Iterator[Api]:
    """`python -m api` (or `command`) as a real process on a free port, storing with `backend`."""
    port = free_port()
    env = {
        "GPGPU_EVENT_STORE": "sqlite", "GPGPU_API_HOST": "127.0.0.1",
        "GPGPU_API_PORT": str(port), "GPGPU_API_URL": f"http://127.0.0.1:{port}",
        "GPGPU_TEMPORAL_ADDRESS": temporal, "GPGPU_LOG_LEVEL": "WARNING",
        "GPGPU_SIGN_UPS_PER_ADDRESS": "1000000",  # every account from 127.0.0.1
        "GPGPU_STORAGE": backend, **(s3_env or {}),
    }
    if backend == "s3":
        env["GPGPU_S3_BUCKET"] = f"bench-staging-{uuid.uuid4().hex[:8]}"
    env["GPGPU_STORAGE"] = backend  # s3.env says "s3"; the backend asked for wins
    settings = Settings(home=home, api_port=port, api_url=env["GPGPU_API_URL"])
    settings.signing_secret  # noqa: B018 -- made here, before the API reads it
    open_run(settings)
    stack = Stack(settings, env)
    with stopping(stack):
        stack.spawn("api", command or [sys.executable, "-m", "api"])
        wait_for_http(f"{settings.api_url}/healthz", 60, f"the API ({backend})")
        yield Api(backend, stack, settings)


def open_run(settings: Settings) -> None:
    """A run in the API's event store that the bench's grants belong to: storage honours a
    grant only while its run is live (a job allocated to that provider, not ended)."""
    network = Network(env=settings.eventsourcing_env())
    network.open_client(CLIENT_ID, 0)
    network.deposit(CLIENT_ID, 100_000_000, "bench-staging")  # sign-ups get no credits
    spec = parse_job_spec({"name": "bench", "command": "true", "max_price_per_gpu_hour": "2",
                           "timeout": "1h"})
    network.submit_job(JOB_ID, CLIENT_ID, spec)
    network.admit_job(JOB_ID)
    network.register_provider(PROVIDER_ID, "bench", 1_000_000,
                              [{"index": 0, "model": "bench", "memory_mb": 1024}])
    network.allocate(JOB_ID, 1, set(), {PROVIDER_ID})


# Staging


def stage_verified(url: str, target: Path, digest: str, size: int) -> int:
    """What GpuActivities.stage_inputs does for one input, less the Temporal heartbeats."""
    moved = 0

    def on_chunk(n: int) -> None:  # the activity counts bytes for its heartbeat here
        nonlocal moved
        moved += n

    with httpx.Client(timeout=HTTP_TIMEOUT, follow_redirects=True) as client:
        return download_verified(client, url, target, name=KEY, digest=digest, size=size,
                                 on_chunk=on_chunk)


@dataclass
class Runs:
    size: int
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def add(self, backend: str, seconds: float) -> float:
        self.seconds.setdefault(backend, []).append(seconds)
        return self.size / (1 << 20) / seconds

    def throughput(self, backend: str, stat: str) -> float:
        times = self.seconds[backend]
        best_or_median = min(times) if stat == "best" else statistics.median(times)
        return self.size / (1 << 20) / best_or_median


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time a process has used so far (Linux; 0 elsewhere or for None)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(warm: Path, action: Callable[[], int], size: int) -> float:
    read_through(warm)
    os.sync()  # the last round's dirty pages must not be written back during this one
    started = time.perf_counter()
    got = action()
    seconds = time.perf_counter() - started
    if got != size:
        raise RuntimeError(f"moved {got} bytes, expected {size}")
    return seconds


def measure(apis: list[Api], source: Path, scratch: Path, digest: str, size: int, repeat: int,
            stage: StageFn = stage_verified) -> Runs:
    """`repeat` interleaved rounds of: plain copy, then staging from each API."""
    target = scratch / "work" / "inputs" / "staging.bin"
    target.parent.mkdir(parents=True, exist_ok=True)
    runs = Runs(size)
    gib = size / (1 << 30)

    def copy() -> int:
        shutil.copyfile(source, target)
        return target.stat().st_size

    steps: list[tuple[str, int | None, Callable[[], int]]] = [("copy", None, copy)]
    steps += [
        (api.backend, api.pid,
         partial(stage, api.url("GET", digest=digest, size=size), target, digest, size))
        for api in apis
    ]
    for _, _, action in steps[1:]:  # untimed: each API process's first large download
        action()
        target.unlink()
    for n in range(1, repeat + 1):
        for backend, pid, action in steps:
            before = cpu_seconds(pid), cpu_seconds(os.getpid())
            rate = runs.add(backend, timed(source, action, size))
            api_cpu = cpu_seconds(pid) - before[0]
            own_cpu = cpu_seconds(os.getpid()) - before[1]
            target.unlink()
            say(f"  round {n}/{repeat}: {backend:<10} {rate:8.1f} MiB/s; CPU s/GiB: "
                f"API {api_cpu / gib:.2f}, this process {own_cpu / gib:.2f}")
    return runs


# Entry point


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench staging", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, help="input size in MiB (1024; 64 with --quick)")
    p.add_argument("--repeat", type=int, default=3, help="timed rounds (3)")
    p.add_argument("--stat", choices=("median", "best"), default="median",
                   help="which round each figure reports (median)")
    p.add_argument("--skip-s3", action="store_true", help="no Ceph RGW: filesystem and copy")
    p.add_argument("--workdir", type=Path, help="where the input, the stores and the scratch "
                   "directory go (a new temporary directory, removed afterwards)")
    p.add_argument("--quick", action="store_true", help="small sizes, for tests")
    args = p.parse_args(argv)
    args.size_mib = args.size_mib or (64 if args.quick else 1024)
    if args.size_mib < 1 or args.repeat < 1:
        p.error("--size-mib and --repeat must be at least 1")
    return args


def filesystem_of(path: Path) -> str:
    try:
        found = subprocess.run(["findmnt", "-no", "FSTYPE", "--target", str(path)],
                               capture_output=True, text=True, timeout=10)
        return found.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def upload(api: Api, source: Path, digest: str, size: int) -> None:
    """Into the client's storage through the API, as `gpgpu` clients and providers upload."""
    started = time.perf_counter()
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        upload_file(client, api.url("PUT", size=size), source, digest=digest, size=size)
    seconds = time.perf_counter() - started
    say(f"{api.backend}: uploaded {size >> 20} MiB through the API in {seconds:.1f} s")


def main(argv: list[str]) -> int:
    return run(parse(argv))


def run(args: argparse.Namespace, stage: StageFn = stage_verified) -> int:
    """The bench; `stage` swaps the code path measured (to try a change before making it)."""
    backends = [b for b in BACKENDS if not (b == "s3" and args.skip_s3)]
    size = args.size_mib << 20
    started = time.perf_counter()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="gpgpu-bench-staging-", dir=args.workdir))
    try:
        fs = filesystem_of(tmp)
        say(f"staging: {args.size_mib} MiB, backends {', '.join(backends)}, {args.repeat} rounds, "
            f"under {tmp} ({fs}); {os.cpu_count()} CPUs")
        source = tmp / "input.bin"
        make_input(source, args.size_mib)
        digest, _ = digest_file(source)
        with ExitStack() as servers:
            temporal = servers.enter_context(temporal_server(tmp / "temporal"))
            s3_env = servers.enter_context(s3_server(tmp / "rgw")) if "s3" in backends else None
            apis = [
                servers.enter_context(api_process(b, tmp / f"api-{b}", temporal, s3_env))
                for b in backends
            ]
            for api in apis:
                upload(api, source, digest, size)
            stored = apis[0].stored_file  # the filesystem backend's object: the copy's source
            if digest_file(stored) != (digest, size):
                raise RuntimeError(f"{stored} is not the uploaded input")
            source.unlink()  # one copy of the bytes on disk is enough from here on
            runs = measure(apis, stored, tmp / "scratch", digest, size, args.repeat, stage)
        copy = runs.throughput("copy", args.stat)
        labels = {"size_mib": args.size_mib, "repeat": args.repeat, "stat": args.stat,
                  "cache": "warm", "fs": fs}
        for backend in [*backends, "copy"]:
            rate = runs.throughput(backend, args.stat)
            emit("throughput_mib_per_s", rate, "MiB/s", backend=backend, **labels)
            emit("ratio_to_copy", rate / copy, "ratio", backend=backend, **labels)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"done in {time.perf_counter() - started:.0f} s")
    return 0
