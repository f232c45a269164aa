"""The production stack file is valid compose (docker-compose v1 from Debian checks it offline)."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

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


def _config() -> dict[str, Any]:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose (apt: docker-compose) is not installed")
    done = subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=True)
    found: dict[str, Any] = yaml.safe_load(done.stdout)
    return found


def test_temporal_is_out_of_reach_of_providers_and_the_outside() -> None:
    config = _config()
    services, networks = config["services"], config["networks"]
    temporal = services["temporal"]
    assert "ports" not in temporal, "Temporal's frontend is published"
    assert all(networks[n].get("internal") for n in temporal["networks"])
    agent = services["gpu-worker"]
    assert not set(agent["networks"]) & set(temporal["networks"]), "the agent can reach Temporal"
    for name in ("postgres", "minio", "control-worker"):
        assert set(services[name]["networks"]) <= set(temporal["networks"]), name
    env = agent["environment"]
    assert not [k for k in env if k.startswith(("GPGPU_TEMPORAL", "GPGPU_PG", "GPGPU_S3"))], env
    assert set(env) == {"GPGPU_API_URL", "GPGPU_API_KEY", "GPGPU_LOG_FORMAT"}
    ui_ports = services["temporal-ui"]["ports"]  # histories: on the host's loopback only
    assert ui_ports and all(
        (p.get("host_ip") if isinstance(p, dict) else str(p).split(":")[0]) == "127.0.0.1"
        for p in ui_ports
    ), ui_ports


def test_the_api_and_the_control_worker_are_given_the_same_keys() -> None:
    """Two containers with no file in common: the grants the control worker signs verify at
    the API, and both read Temporal's payloads, only through keys both are given."""
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose (apt: docker-compose) is not installed")
    key, payload = "ab" * 32, "cd" * 32
    done = subprocess.run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True,
        text=True, timeout=60, cwd=ROOT, check=True,
        env={"PATH": "/usr/bin:/bin", "GPGPU_SIGNING_KEY": key,
             "GPGPU_TEMPORAL_PAYLOAD_KEYS": payload},
    )
    services = yaml.safe_load(done.stdout)["services"]
    for name in ("api", "control-worker"):
        env = services[name]["environment"]
        assert env["GPGPU_SIGNING_KEY"] == key and env["GPGPU_TEMPORAL_PAYLOAD_KEYS"] == payload
    assert "GPGPU_SIGNING_KEY" not in services["gpu-worker"]["environment"]


def test_the_image_holds_every_package_and_the_control_plane() -> None:
    """infra/docker/Dockerfile copies every package pyproject.toml ships (a package left out
    installs, then fails at its first import in the container), and installs the `server`
    extra: the API and the control worker run from this image."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    dockerfile = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    assert "pip install '.[server,otlp]'" in dockerfile
