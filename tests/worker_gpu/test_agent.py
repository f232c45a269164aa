"""The agent as people run it: a process, its exit code and the lines it prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.devstack import free_port
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
