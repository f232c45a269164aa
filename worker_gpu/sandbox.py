"""The process runtime's sandbox: every job runs inside bubblewrap (`bwrap`).

What a job gets: fresh user, mount, PID, IPC, UTS, cgroup and network namespaces; uid and
gid 65534 inside, which is also who it is outside when the agent runs as root (bwrap is
started as nobody, so the job holds no root-owned file and RLIMIT_NPROC is enforced; a
sandbox mapped to root outside would be exempt from it); a read-only view of /usr (the
/bin, /lib, /lib64 links) and of an allow-list of /etc (not all of it: /etc holds service
passwords, keyrings and private keys on many machines) with a passwd and group of two
lines; a fresh /proc of its own processes; a minimal /dev (plus, on a GPU machine, the
driver's shared NVIDIA nodes and the device nodes of the job's own GPUs only, with the
driver's /proc entries of those GPUs only, and a read-only /sys, which CUDA and NVML need:
a job cannot reach a GPU it was not given, whatever it sets CUDA_VISIBLE_DEVICES to,
`gpu_binds`); its work directory at
/work as the only writable path on disk, and size-limited tmpfs /tmp and /dev/shm. No
network unless the job asks and the provider allows it, and then the host's (see
--allow-network). Limits are set inside the sandbox with prlimit(1) just before the job's
command: processes, address space (or data size on a GPU machine: CUDA reserves far more
address space than it uses), CPU seconds, file size, no core dumps. Where the agent can
make control groups, memory and processes are also limited for the job as a whole
(worker_gpu/cgroup.py).

When the job's first process exits, or the sandbox's PID 1 is killed, the kernel kills
every process of its PID namespace, `setsid` daemons included.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534
INSIDE_WORKDIR = "/work"
INSIDE_PATH = "/usr/local/bin:/usr/bin:/bin"
# What a program needs of /etc: the loader's cache, name service and time zone settings,
# TLS roots, the Debian alternatives links (/usr/bin/awk -> /etc/alternatives/awk) and
# python's site files. Nothing else: /etc also holds secrets (database and Ceph keys,
# ssl/private, docker's config) that a job must never read.
ETC_ALLOWED = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "nsswitch.conf", "localtime", "timezone",
    "alternatives", "ssl/certs", "ca-certificates", "ca-certificates.conf", "mime.types",
    "protocols", "services", "os-release", "debian_version", "gai.conf", "host.conf",
    "python3", "python3.*", "fonts", "magic", "magic.mime", "inputrc",
)  # fmt: skip
PASSWD = f"root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:{NOBODY}:{NOBODY}:nobody:" \
         f"{INSIDE_WORKDIR}:/usr/sbin/nologin\n"
GROUP = f"root:x:0:\nnogroup:x:{NOBODY}:\n"
PORTAL = "/run/gpgpu-work"  # see Bwrap._as_nobody
HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"


class SandboxUnavailable(Exception):
    """bubblewrap is missing here, or cannot create the namespaces a sandbox needs."""


@dataclass(frozen=True)
class JobLimits:
    """What one job may use. Per-GPU figures are multiplied by the GPUs the job holds.

    memory_mb_per_gpu: per process (RLIMIT_AS, or RLIMIT_DATA on a GPU machine), and
    for the whole job where control groups can be made (worker_gpu/cgroup.py); None: no
    limit. cpus_per_gpu: CPU seconds per process = cpus x GPUs x the job's
    timeout (RLIMIT_CPU), and a quota of cpus x GPUs for the job as a whole where its
    cpu control group can be made. pids: processes and threads of the job (RLIMIT_NPROC, which
    the job's own user namespace turns into a per-job count; and the job's pids control
    group). disk_mb: the work
    directory in all, checked while the job runs, and any one file (RLIMIT_FSIZE).
    tmp_mb: each of /tmp and /dev/shm (tmpfs, in memory).
    """

    memory_mb_per_gpu: int | None = None
    cpus_per_gpu: float | None = None
    pids: int = 4096
    disk_mb: int = 20 * 1024
    tmp_mb: int = 1024

    def memory_bytes(self, gpus: int, override_mb: int | None = None) -> int | None:
        mb = override_mb or (self.memory_mb_per_gpu and self.memory_mb_per_gpu * max(1, gpus))
        return mb * 2**20 if mb else None

    def cpus(self, gpus: int) -> float | None:
        """CPUs' worth of time the job may use at once (its cpu control group, where it has
        one)."""
        return None if self.cpus_per_gpu is None else self.cpus_per_gpu * max(1, gpus)

    def cpu_seconds(self, gpus: int, timeout_s: int) -> int | None:
        if self.cpus_per_gpu is None:
            return None
        return max(1, math.ceil(self.cpus_per_gpu * max(1, gpus) * timeout_s))


def prlimit_args(
    limits: JobLimits, gpus: int, timeout_s: int, memory_limit_mb: int | None, *, gpu_devices: bool
) -> list[str]:
    """`prlimit --X=N:N ... --`: the job's command follows."""
    prlimit = shutil.which("prlimit", path=INSIDE_PATH) or "prlimit"
    disk = limits.disk_mb * 2**20
    args = [prlimit, f"--nproc={limits.pids}:{limits.pids}", "--core=0:0", f"--fsize={disk}:{disk}"]
    memory = limits.memory_bytes(gpus, memory_limit_mb)
    if memory is not None:
        args.append(f"--{'data' if gpu_devices else 'as'}={memory}:{memory}")
    cpu = limits.cpu_seconds(gpus, timeout_s)
    if cpu is not None:
        args.append(f"--cpu={cpu}:{cpu + 5}")  # SIGXCPU at the soft limit, SIGKILL 5 s later
    return [*args, "--"]


def nvidia_devices() -> list[str]:
    """The NVIDIA device nodes of this machine (none without a driver)."""
    return sorted(glob.glob("/dev/nvidia*"))


# The driver's nodes every CUDA process opens, whichever GPUs it uses (those present).
NVIDIA_SHARED_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
# One directory per GPU (its PCI bus id), read by NVML; each says its device minor.
NVIDIA_PROC_GPUS = "/proc/driver/nvidia/gpus"


def proc_minor(entry: Path) -> int | None:
    """The device minor number a /proc/driver/nvidia/gpus/<bus id> entry names."""
    try:
        text = (entry / "information").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "Device Minor" and value.strip().isdigit():
            return int(value.strip())
    return None


def gpu_binds(
    minors: list[int], dev: Path = Path("/dev"), proc_gpus: Path = Path(NVIDIA_PROC_GPUS)
) -> list[str]:
    """bwrap arguments that give a job the GPUs of these NVML minor numbers and no other:
    the driver's shared nodes, /dev/nvidiaN of each of its GPUs, and in the sandbox's /proc
    only those GPUs' driver entries (so NVML inside lists just them). No GPU, no node at all.
    SandboxUnavailable if an assigned GPU's node is missing (the driver went away)."""
    if not minors:
        return []
    own = [dev / f"nvidia{m}" for m in sorted(set(minors))]
    missing = [str(p) for p in own if not p.exists()]
    if missing:
        raise SandboxUnavailable(f"the job's GPU device nodes are missing: {', '.join(missing)}")
    shared = [dev / name for name in NVIDIA_SHARED_NODES if (dev / name).exists()]
    args = [a for node in [*shared, *own] for a in ("--dev-bind", str(node), f"/dev/{node.name}")]
    if proc_gpus.is_dir():
        args += ["--tmpfs", NVIDIA_PROC_GPUS]
        for entry in sorted(proc_gpus.iterdir()):
            if proc_minor(entry) in minors:
                args += ["--ro-bind", str(entry), f"{NVIDIA_PROC_GPUS}/{entry.name}"]
        args += ["--remount-ro", NVIDIA_PROC_GPUS]
    return args


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def _etc_binds() -> list[str]:
    args: list[str] = []
    for pattern in ETC_ALLOWED:
        for path in sorted(glob.glob(f"/etc/{pattern}")):
            args += ["--ro-bind", path, path]
    return args


def _data_pipe(text: str) -> int:
    """A pipe's read end holding `text` (small: well under a pipe's buffer)."""
    read, write = os.pipe()
    try:
        os.write(write, text.encode())
    finally:
        os.close(write)
    return read


@dataclass
class Launch:
    """A bwrap command line and the descriptors it reads, to close once bwrap has started."""

    argv: list[str]
    fds: list[int]

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)


class Bwrap:
    """How to start a job in a bubblewrap sandbox on this machine."""

    def __init__(self, binary: str | None = None) -> None:
        found = binary or find_bwrap()
        if not found:
            raise SandboxUnavailable(
                "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
            )
        self.binary = found
        self.devices = nvidia_devices()
        self.dev, self.proc_gpus = Path("/dev"), Path(NVIDIA_PROC_GPUS)  # tests point elsewhere
        # As root, bwrap is started as nobody: see the module's docstring.
        self.drop_to_nobody = os.geteuid() == 0

    def command(
        self, workdir: Path, info_fd: int, command: list[str], env: dict[str, str], *,
        network: bool, tmp_mb: int, gpu_minors: list[int] | None = None,
    ) -> Launch:
        """The command line that runs `command` in a sandbox with `workdir` at /work, given
        the GPUs of `gpu_minors` (NVML minor numbers) and no other. The sandbox's PID 1 and
        namespaces are written as JSON to info_fd."""
        tmp = str(tmp_mb * 2**20)
        data = [_data_pipe(PASSWD), _data_pipe(GROUP), _data_pipe(HOSTS)]
        resolv = []
        if network:
            with contextlib.suppress(OSError):  # a copy: it may be a link into /run
                data.append(_data_pipe(Path("/etc/resolv.conf").read_text()))
                resolv = ["--ro-bind-data", str(data[-1]), "/etc/resolv.conf"]
        source = PORTAL if self.drop_to_nobody else str(workdir)
        argv = [
            self.binary,
            "--unshare-all", "--unshare-user", "--disable-userns",
            *(["--share-net"] if network else []),
            "--uid", str(NOBODY), "--gid", str(NOBODY), "--hostname", "gpgpu-job",
            "--die-with-parent", "--new-session",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/lib32", "/lib32",
            *_etc_binds(),
            "--ro-bind-data", str(data[0]), "/etc/passwd",
            "--ro-bind-data", str(data[1]), "/etc/group",
            "--ro-bind-data", str(data[2]), "/etc/hosts",
            *resolv,
            "--proc", "/proc",
            "--dev", "/dev",
            "--size", tmp, "--tmpfs", "/dev/shm",
            *gpu_binds(gpu_minors or [], self.dev, self.proc_gpus),
            *(["--ro-bind", "/sys", "/sys"] if self.devices else []),
            "--size", tmp, "--perms", "1777", "--tmpfs", "/tmp",
            "--bind", source, INSIDE_WORKDIR,
            "--chdir", INSIDE_WORKDIR,
            # The sandbox's own root and /dev are tmpfs: read-only, so that no job can fill
            # memory through them (/tmp and /dev/shm have a size).
            "--remount-ro", "/dev", "--remount-ro", "/",
            "--clearenv",
            *[a for k, v in env.items() for a in ("--setenv", k, v)],
            "--info-fd", str(info_fd),
            "--", *command,
        ]  # fmt: skip
        if self.drop_to_nobody:
            argv = [*self._as_nobody(workdir), *argv]
        return Launch(argv, data)

    @staticmethod
    def _as_nobody(workdir: Path) -> list[str]:
        """What starts bwrap as nobody from root. bwrap resolves its bind sources by path,
        as the user it runs as, and nobody may not search the agent's folders (/root is
        0700): so, in a mount namespace of its own, the work dir is first bound at a path
        nobody can reach. The namespace, and the mount, end with the job."""
        script = (
            f"mount -t tmpfs -o mode=0755,size=64k gpgpu /run && mkdir {PORTAL}"
            f' && mount --bind -- "$0" {PORTAL} && exec "$@"'
        )
        return [
            "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script,
            str(workdir),
            "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
        ]  # fmt: skip

    def check(self) -> None:
        """Start one sandbox as jobs are started; SandboxUnavailable with bwrap's reason if
        this machine cannot create it (no user namespaces for nobody, say)."""
        scratch = Path(tempfile.mkdtemp(prefix="gpgpu-sandbox-check-"))
        try:
            if self.drop_to_nobody:
                os.chown(scratch, NOBODY, NOBODY)
            read, write = os.pipe()
            launch = self.command(scratch, write, ["/bin/sh", "-c", "echo x > /work/ok"], {},
                                  network=False, tmp_mb=1)  # fmt: skip
            try:
                done = subprocess.run(launch.argv, pass_fds=(write, *launch.fds), env={
                    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as err:
                raise SandboxUnavailable(f"bwrap did not run: {err}") from None
            finally:
                launch.close()
                for d in (write, read):
                    os.close(d)
            if done.returncode != 0 or not (scratch / "ok").exists():
                reason = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
                raise SandboxUnavailable(f"bwrap cannot create a sandbox here: {reason}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @staticmethod
    def installed() -> bool:
        return find_bwrap() is not None


def read_info(fd: int) -> int | None:
    """The sandbox's PID 1 (host pid) from bwrap's --info-fd; None when bwrap failed first.
    Blocks until bwrap wrote it or exited (it closes the pipe either way)."""
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    try:
        pid = json.loads(data or b"{}").get("child-pid")
    except ValueError:
        return None
    return int(pid) if isinstance(pid, int) else None


def walk(root: Path) -> Iterator[Path]:
    yield root
    for folder, dirs, files in os.walk(root):  # never follows symlinks
        for name in dirs + files:
            yield Path(folder, name)


def give(root: Path, uid: int, gid: int) -> None:
    """chown the tree, links themselves and never what they point at: a job may leave a
    symlink to /etc/shadow in its work dir. Set-id bits go, so that no job file becomes a
    set-uid program of the agent's user."""
    for path in walk(root):
        with contextlib.suppress(FileNotFoundError):
            os.chown(path, uid, gid, follow_symlinks=False)
            mode = os.stat(path, follow_symlinks=False).st_mode
            if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))


def disk_usage(root: Path) -> int:
    """Bytes the tree holds on disk (allocated blocks: a sparse file counts what it uses)."""
    total = 0
    for path in walk(root):
        with contextlib.suppress(OSError):
            total += os.lstat(path).st_blocks * 512
    return total
