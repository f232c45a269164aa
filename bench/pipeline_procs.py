"""The processes of `python -m bench pipeline` (Temporal, our network, the baseline's
workers), what CPU they use, and their profiles under `--profile DIR`.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import runpy
import signal
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, TypeVar

from bench._common import cpu_seconds, say
from infra.settings import Settings
from ops.devstack import Stack
from ops.launch import free_port, temporal_dev_args, wait_temporal_serving

T = TypeVar("T")



def machine_busy() -> tuple[float, float]:
    """CPU seconds this machine was busy and in all, so far, over every core (Linux)."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = ticks[3] + ticks[4]  # idle, iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


class Cpu:
    """CPU seconds each watched process used from now until `report`, and the whole machine."""

    def __init__(self, pids: dict[str, int]):
        self.pids = {**pids, "bench": os.getpid()}
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.wall = time.perf_counter()
        self.machine = machine_busy()

    def report(self, per: int, what: str) -> tuple[float, float]:
        """Says where the CPU went; returns our processes' CPU ms per `what` and the share
        of the machine's cores they had."""
        wall = time.perf_counter() - self.wall
        used = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        groups: dict[str, float] = defaultdict(float)
        for name, seconds in used.items():
            groups["providers" if name.startswith(("provider", "plain-gpu")) else name] += seconds
        total = sum(groups.values())
        parts = ", ".join(f"{k} {v / per * 1000:.1f}" for k, v in
                          sorted(groups.items(), key=lambda kv: -kv[1]))
        busy, all_ = (b - a for a, b in zip(self.machine, machine_busy(), strict=True))
        share = total / wall / (os.cpu_count() or 1)
        say(f"  CPU ms per {what}: {parts}; total {total / per * 1000:.1f} "
            f"({share * 100:.0f}% of {os.cpu_count()} cores over {wall:.1f} s; "
            f"the machine was {busy / max(all_, 1e-9) * 100:.0f}% busy)")
        return total / per * 1000, share


class Processes:
    """Child processes in groups that stop separately; the Temporal server outlives the rest."""

    def __init__(self, home: Path):
        self.home = home
        self.temporal_address = f"127.0.0.1:{free_port()}"
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.settings = Settings(
            home=home, event_store="sqlite", api_host="127.0.0.1", api_port=self.api_port,
            api_url=self.api_url, temporal_address=self.temporal_address,
        )
        self.env = {
            "GPGPU_EVENT_STORE": "sqlite", "GPGPU_API_HOST": "127.0.0.1",
            "GPGPU_API_PORT": str(self.api_port), "GPGPU_API_URL": self.api_url,
            "GPGPU_TEMPORAL_ADDRESS": self.temporal_address, "GPGPU_LOG_LEVEL": "WARNING",
            "GPGPU_ADAPTIVE_CHECKS": "false", "GPGPU_CANARIES": "false",
            # Sign-up gives nothing by default; the bench's clients open with 100 credits.
            "GPGPU_STARTING_BALANCE_MICRO": "100000000",
            "GPGPU_SIGN_UPS_PER_ADDRESS": "1000000",  # every account from 127.0.0.1
            # One client may submit a whole batch, one account owns every provider: the
            # flood caps (README, Configuration) stay out of the figures.
            "GPGPU_MAX_LIVE_JOBS_PER_CLIENT": "1000000",
            "GPGPU_MAX_SUBMISSIONS_PER_CLIENT_PER_MINUTE": "1000000",
            "GPGPU_MAX_PROVIDERS_PER_ACCOUNT": "10000",
        }
        self.stacks: list[Stack] = []

    def stack(self) -> Stack:
        stack = Stack(self.settings, self.env)
        self.stacks.append(stack)
        return stack

    def start_temporal(self) -> None:
        """As `gpgpu up` starts it (SQLite file, WAL, the jobs' search attributes), headless."""
        port = int(self.temporal_address.rpartition(":")[2])
        self.stack().spawn_listening("temporal", lambda: temporal_dev_args(
            port, self.home / "temporal.db",
        ), "127.0.0.1", port, "the Temporal dev server")  # fmt: skip
        # Its port opens a moment before its frontend serves: a client that connects in
        # between fails with "Frontend is not healthy yet" (seen in a CI-try).
        wait_temporal_serving(self.temporal_address, 60, "the Temporal dev server")

    def pids(self) -> dict[str, int]:
        return {c.name: c.proc.pid for s in self.stacks for c in s.children
                if c.proc.poll() is None}

    def check_alive(self) -> None:
        for s in self.stacks:
            for c in s.children:
                if c.proc.poll() is not None:
                    raise RuntimeError(f"{c.name} exited with code {c.proc.returncode}")

    def stop(self, stack: Stack) -> None:
        interrupt = signal.getsignal(signal.SIGINT)
        try:
            stack.stop(quiet=True)
        finally:
            signal.signal(signal.SIGINT, interrupt)  # Stack.stop ignores Ctrl-C from then on
            self.stacks.remove(stack)

    def stop_all(self) -> None:
        for stack in reversed(list(self.stacks)):
            self.stop(stack)

    def log_tails(self) -> None:
        for log in sorted((self.home / "logs").glob("*.log")):
            text = log.read_text(errors="replace").strip()
            if text:
                say(f"--- {log.name} ---\n{text[-2000:]}")


# Profiles: `--profile DIR` runs the API, the control worker and the providers under cProfile


class _Snapshot:
    """What pstats.Stats loads: a profiler's figures so far, without stopping it."""

    def __init__(self, profile: cProfile.Profile):
        profile.snapshot_stats()
        self.stats = dict(profile.stats)

    def create_stats(self) -> None:
        pass


def profiled_main(argv: list[str]) -> int:
    """`python -m bench pipeline _profiled OUT MODULE ARGS...`: run `python -m MODULE ARGS`
    with a CPU profiler (thread CPU time) on every thread; SIGUSR1 clears what it has seen
    so far, SIGUSR2 writes it to OUT."""
    out, module = Path(argv[0]), argv[1]
    profiles: list[cProfile.Profile] = []

    def new_profile() -> cProfile.Profile:
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        return profile

    def on_thread_start(*_: object) -> None:  # the thread's own profiler replaces this hook
        new_profile().enable()

    def clear(*_: object) -> None:
        for profile in list(profiles):
            profile.clear()

    def dump(*_: object) -> None:
        stats = pstats.Stats()
        for profile in list(profiles):
            snapshot = _Snapshot(profile)
            if snapshot.stats:
                stats.add(snapshot)  # type: ignore[arg-type]
        tmp = out.with_suffix(".tmp")
        stats.dump_stats(tmp)
        tmp.replace(out)

    signal.signal(signal.SIGUSR1, clear)
    signal.signal(signal.SIGUSR2, dump)
    threading.setprofile(on_thread_start)
    sys.argv = [module, *argv[2:]]
    new_profile().enable()
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


def profile_report(name: str, paths: list[Path], top: int = 12) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    stats = pstats.Stats(*(str(p) for p in paths))
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in table.values()) or 1e-9

    def where(func: tuple[str, int, str]) -> str:
        filename, line, fn = func
        short = filename.replace(root + "/", "")
        short = short.split("site-packages/")[-1]
        return f"{fn} ({short}:{line})" if line else fn

    say(f"  {name}: {total:.1f} s of CPU; most own time:")
    for func, row in sorted(table.items(), key=lambda kv: -kv[1][2])[:top]:
        say(f"    {row[2]:7.2f} s {row[2] / total * 100:5.1f}%  {where(func)}")
    ours = [(f, r) for f, r in table.items() if f[0].startswith(root)
            and "/.venv/" not in f[0] and "/bench/" not in f[0]]
    say(f"  {name}: our functions, most time inside them (with what they call):")
    for func, row in sorted(ours, key=lambda kv: -kv[1][3])[:top]:
        say(f"    {row[3]:7.2f} s {row[3] / total * 100:5.1f}%  {where(func)}  x{row[1]}")



def replicas(name: str, n: int) -> list[str]:
    """Process names for n copies: the first keeps the name, then name-2, name-3, ..."""
    return [name] + [f"{name}-{k}" for k in range(2, n + 1)]

