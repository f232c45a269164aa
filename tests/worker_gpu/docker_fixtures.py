"""A real Docker engine for the docker runtime's tests: scripts/dockerd-up.sh in a folder
of its own, and the offline test image from scripts/make-test-image.sh."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parents[2] / "scripts"
TEST_IMAGE = "gpgpu-test:latest"


@dataclass
class Engine:
    docker_host: str
    folder: Path


def _tail(text: str, lines: int = 8) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


@contextmanager
def docker_engine() -> Iterator[Engine]:
    """Start dockerd (installing docker.io when missing), build the test image, and stop
    the engine and its containers afterwards. Skips only where no engine can run here."""
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root, and these tests run as another user")
    # A short folder: the engine's unix socket path must stay under 108 bytes.
    folder = Path(tempfile.mkdtemp(prefix="gpgpu-dockerd-", dir="/tmp"))
    try:
        up = subprocess.run(
            [SCRIPTS / "dockerd-up.sh", folder], capture_output=True, text=True, timeout=600
        )
        if up.returncode == 3:
            pytest.skip(f"no Docker engine can be installed here: {_tail(up.stderr)}")
        if up.returncode != 0:
            pytest.skip(f"dockerd does not start here: {_tail(up.stderr)}")
        docker_host = up.stdout.strip().splitlines()[-1].removeprefix("DOCKER_HOST=")
        made = subprocess.run(
            [SCRIPTS / "make-test-image.sh", TEST_IMAGE],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "DOCKER_HOST": docker_host},
        )
        if made.returncode != 0:
            raise RuntimeError(f"make-test-image.sh failed: {_tail(made.stderr)}")
        yield Engine(docker_host, folder)
    finally:
        subprocess.run([SCRIPTS / "dockerd-down.sh", folder], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
