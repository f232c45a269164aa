"""`python -m bench sandbox`: what the bubblewrap sandbox adds to a job's start.

Two measurements, each with the sandbox (bwrap as the agent runs it: as nobody
when run as root, in a mount namespace of its own, limits by prlimit) and
without it, rounds interleaved so that drift hits both alike:

- launch: the bare command line, started and waited for with subprocess.run:
  what the sandbox itself costs.
- runtime: `ProcessRuntime.run` as the execute step calls it, work dir lent and
  taken back, log file, reap (and its 20 ms polling of the job) included.

Two jobs: `true` (the start alone) and `python3 -c pass` (an interpreter start,
which reads more of /usr), both as /usr/bin's binaries on either side.

Figures, one JSON line each on stdout: start_ms {measure, job, runtime: bwrap |
plain} (median, or `--stat best`), and overhead_ms {measure, job}: bwrap's less
plain's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from worker_gpu.runtime_process import BWRAP_ENV, ProcessRuntime
from worker_gpu.sandbox import NOBODY, Bwrap, JobLimits, prlimit_args

JOBS = {"true": ["/usr/bin/true"], "python": ["/usr/bin/python3", "-c", "pass"]}


def emit(metric: str, value: float, **labels: Any) -> None:
    print(json.dumps({"bench": "sandbox", "metric": metric, "value": round(value, 2),
                      "unit": "ms", **labels}), flush=True)  # fmt: skip


def _timed(start: Callable[[], int]) -> float:
    started = time.perf_counter()
    code = start()
    elapsed = (time.perf_counter() - started) * 1000
    if code != 0:
        raise SystemExit(f"a bench job failed (exit {code})")
    return elapsed


def launch_plain(command: list[str]) -> int:
    return subprocess.run(command, stdin=subprocess.DEVNULL).returncode


def run_job(runtime: ProcessRuntime, command: list[str], work: Callable[[], Path]) -> int:
    return runtime.run(command, work(), [0], 60, {}).exit_code or 0


def launch_bwrap(bwrap: Bwrap, command: list[str], where: Callable[[], Path]) -> int:
    work = where()
    work.mkdir(parents=True, exist_ok=True)
    if bwrap.drop_to_nobody:
        os.chown(work, NOBODY, NOBODY)
    read, write = os.pipe()
    limited = prlimit_args(JobLimits(), 1, 60, None, gpu_devices=bool(bwrap.devices))
    launch = bwrap.command(work, write, [*limited, *command], {}, network=False, tmp_mb=64)
    try:
        return subprocess.run(launch.argv, pass_fds=(write, *launch.fds), env=BWRAP_ENV,
                              stdin=subprocess.DEVNULL).returncode  # fmt: skip
    finally:
        launch.close()
        os.close(write)
        os.close(read)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sandbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30, help="rounds per figure (default 30)")
    parser.add_argument("--stat", choices=("median", "best"), default="median")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat: at least 1")
    bwrap = Bwrap()
    runtimes = {"bwrap": ProcessRuntime(bwrap=bwrap),
                "plain": ProcessRuntime(unsafe_no_sandbox=True)}  # fmt: skip
    figure = statistics.median if args.stat == "median" else min
    with tempfile.TemporaryDirectory(prefix="gpgpu-bench-sandbox-") as tmp:
        n = iter(range(10**9))

        def work() -> Path:
            return Path(tmp) / str(next(n))

        for job, command in JOBS.items():
            starts: dict[tuple[str, str], Callable[[], int]] = {
                ("launch", "bwrap"): partial(launch_bwrap, bwrap, command, work),
                ("launch", "plain"): partial(launch_plain, command),
                **{("runtime", name): partial(run_job, runtime, command, work)
                   for name, runtime in runtimes.items()},
            }
            for start in starts.values():  # once untimed: a warm page cache
                _timed(start)
            times: dict[tuple[str, str], list[float]] = {key: [] for key in starts}
            for _ in range(args.repeat):
                for key, start in starts.items():
                    times[key].append(_timed(start))
            for measure in ("launch", "runtime"):
                bw, plain = figure(times[measure, "bwrap"]), figure(times[measure, "plain"])
                for name, value in (("bwrap", bw), ("plain", plain)):
                    emit("start_ms", value, measure=measure, job=job, runtime=name,
                         stat=args.stat, rounds=args.repeat)  # fmt: skip
                emit("overhead_ms", bw - plain, measure=measure, job=job, stat=args.stat)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
