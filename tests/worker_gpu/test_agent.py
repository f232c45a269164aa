"""The agent as people run it: a process, its exit code and the lines it prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.launch import free_port
from tests.worker_gpu.agent_process import AgentProcess
from worker_gpu.discovery import NvmlUnavailable, discover_nvml


def _has_driver() -> bool:
    try:
        discover_nvml()
    except NvmlUnavailable:
        return False
    return True


@pytest.mark.skipif(_has_driver(), reason="this machine has an NVIDIA driver")
def test_without_a_driver_or_simulate_it_says_what_to_do() -> None:
    agent = AgentProcess(["--provider-id", "p1"], {})

    code = agent.wait()

    assert code == 2
    assert agent.lines[-1].startswith("no NVIDIA driver found (NVML: ")
    assert agent.lines[-1].endswith("start with --simulate to declare GPUs")


def test_a_bad_declaration_is_named() -> None:
    agent = AgentProcess(["--provider-id", "p1", "--simulate", "2xH100"], {})

    assert agent.wait() == 2
    assert "'2xH100'" in agent.lines[-1]
    assert "expected COUNTxMODEL:MEMORY_GB" in agent.lines[-1]


def test_a_bad_price_is_refused() -> None:
    agent = AgentProcess(["--provider-id", "p1", "--simulate", "1xL4:24", "--price", "abc"], {})

    assert agent.wait() == 2
    assert "--price" in agent.output


def test_sigterm_while_waiting_for_the_api_exits_cleanly(tmp_path: Path) -> None:
    env = {
        "GPGPU_API_URL": f"http://127.0.0.1:{free_port()}",
        "GPGPU_HOME": str(tmp_path),
    }
    agent = AgentProcess(["--provider-id", "p1", "--simulate", "1xL4:24"], env)
    try:
        agent.wait_for("waiting for the API")

        assert agent.terminate() == 0
        assert agent.lines[-1] == "stopped before the provider was serving"
    finally:
        agent.kill()


def test_without_bubblewrap_it_refuses_to_run_jobs(tmp_path: Path) -> None:
    # A PATH with python but no bwrap: the agent must not fall back to running jobs bare.
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("sh", "env"):
        (bare / tool).symlink_to(f"/usr/bin/{tool}")
    agent = AgentProcess(["--provider-id", "p1", "--simulate", "1xL4:24"],
                         {"PATH": str(bare), "GPGPU_HOME": str(tmp_path)})  # fmt: skip

    assert agent.wait() == 4
    assert agent.lines[-1].startswith("bubblewrap (bwrap) is not installed")
    assert agent.lines[-1].endswith("unless the agent is started with --unsafe-no-sandbox")


def test_unsafe_no_sandbox_is_said_out_loud(tmp_path: Path) -> None:
    env = {"GPGPU_API_URL": f"http://127.0.0.1:{free_port()}", "GPGPU_HOME": str(tmp_path)}
    agent = AgentProcess(
        ["--provider-id", "p1", "--simulate", "1xL4:24", "--unsafe-no-sandbox"], env
    )
    try:
        agent.wait_for("waiting for the API")

        assert any(line.startswith("WARNING: --unsafe-no-sandbox") for line in agent.lines)
        assert agent.terminate() == 0
    finally:
        agent.kill()
