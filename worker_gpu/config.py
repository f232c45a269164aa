"""How a provider agent was asked to run (command line); the rest comes from Settings."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUNTIMES = ("process", "docker")


@dataclass
class AgentConfig:
    provider_id: str
    price_per_gpu_hour_micro: int
    region: str = "local"
    simulate: str | None = None
    scratch: Path | None = None
    corrupt_outputs: bool = False
    wrong_results: bool = False
    node: str = "local"
    # How long running activities get to finish after SIGTERM before they are
    # cancelled, which kills their jobs; the workflow then reallocates the work.
    shutdown_grace_s: float = 10.0
    # How jobs run: "process" (local processes, no image) or "docker" (an image each).
    runtime: str = "process"
    # A job gets a network when it asks for one and the provider allows it.
    allow_network: bool = False
    # Per GPU a job holds; None: an even share of this machine between its GPUs.
    job_memory_mb_per_gpu: int | None = None
    job_cpus_per_gpu: float | None = None
    job_pids_limit: int = 4096
    # The work directory's size (and any one file's); process runtime: /tmp's too.
    job_disk_mb: int = 20 * 1024
    job_tmp_mb: int = 1024
    # Process runtime: run jobs without the bubblewrap sandbox (the network is told).
    unsafe_no_sandbox: bool = False

    @property
    def runtimes(self) -> list[str]:
        """What this provider tells the network it runs, at registration."""
        return [self.runtime]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line flags behind the runtime fields of AgentConfig."""
    group = parser.add_argument_group("job runtime")
    group.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="process",
        help="process: jobs run as local processes (default); docker: each job runs "
        "hardened in the container image it names (needs a Docker engine, DOCKER_HOST)",
    )
    group.add_argument(
        "--allow-network",
        action="store_true",
        help="give a network to the jobs that ask for one (default: never). With the "
        "process runtime that is this machine's own network, 127.0.0.1 included: do not "
        "allow it where services listen on this machine",
    )
    group.add_argument(
        "--job-memory-mb",
        type=_positive_int,
        metavar="MB",
        help="memory per GPU a job holds (default: this machine's, less 10%%, split between "
        "its GPUs); process runtime: per process (address space, or data size on a GPU "
        "machine)",
    )
    group.add_argument(
        "--job-cpus",
        type=_positive_float,
        metavar="N",
        help="CPUs per GPU a job holds (default: this machine's split between its GPUs); "
        "process runtime: CPU seconds per process, CPUs x GPUs x the job's timeout",
    )
    group.add_argument(
        "--job-pids",
        type=_positive_int,
        default=4096,
        metavar="N",
        help="processes and threads a job may have at once (default 4096)",
    )
    group.add_argument(
        "--job-disk-mb",
        type=_positive_int,
        default=20 * 1024,
        metavar="MB",
        help="the most a job's work directory (and any one file) may hold (default 20480)",
    )
    group.add_argument(
        "--job-tmp-mb",
        type=_positive_int,
        default=1024,
        metavar="MB",
        help="process runtime: the size of a job's private /tmp and /dev/shm, in memory "
        "(default 1024)",
    )
    group.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="process runtime: run jobs as plain processes of this agent's user, without "
        "the bubblewrap sandbox: a job can then read this machine's files and reach its "
        "services. The network shows the provider as unsandboxed. Only where bubblewrap "
        "cannot run and every job is trusted",
    )


def runtime_fields(args: argparse.Namespace) -> dict[str, Any]:
    """AgentConfig's runtime fields from what add_runtime_arguments parsed."""
    return {
        "runtime": args.runtime,
        "allow_network": args.allow_network,
        "job_memory_mb_per_gpu": args.job_memory_mb,
        "job_cpus_per_gpu": args.job_cpus,
        "job_pids_limit": args.job_pids,
        "job_disk_mb": args.job_disk_mb,
        "job_tmp_mb": args.job_tmp_mb,
        "unsafe_no_sandbox": args.unsafe_no_sandbox,
    }
