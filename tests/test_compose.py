"""The production stack file is valid compose (docker-compose v1 from Debian checks it offline)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_stack_file_validates() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose (apt: docker-compose) is not installed")
    done = subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    for service in ("postgres", "temporal", "temporal-ui", "minio", "api", "control-worker",
                    "gpu-worker"):
        assert f"  {service}:" in done.stdout
    assert "runtime: nvidia" in done.stdout
