"""Finding where per-job control groups can be made (worker_gpu/cgroup.py `detect`), on
directories laid out as the kernel's; the real groups are tried in test_runtime_process.py."""

from __future__ import annotations

import os
from pathlib import Path

from worker_gpu.cgroup import PARENT, detect


def _own(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "self-cgroup"
    path.write_text(text)
    return path


def test_v1_groups_go_under_the_agents_own_memory_and_pids_groups(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup"
    for hierarchy in ("memory/agent.slice", "pids"):
        (mount / hierarchy).mkdir(parents=True)
    for controller in ("memory", "pids"):
        (mount / controller / "cgroup.procs").write_text("")
    own = _own(tmp_path, "4:memory:/agent.slice\n8:pids:/\n0::/\n")

    found = detect(mount, own)

    assert found is not None and found.version == 1
    assert found.parents == {"memory": mount / "memory/agent.slice" / PARENT,
                             "pids": mount / "pids" / PARENT}  # no cpu hierarchy here: none


def test_v2_without_the_memory_controller_means_no_groups(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup"
    mount.mkdir()
    (mount / "cgroup.controllers").write_text("cpu io\n")

    assert detect(mount, _own(tmp_path, "0::/\n")) is None


def test_a_machine_without_cgroup_files_means_no_groups(tmp_path: Path) -> None:
    assert detect(tmp_path / "none", tmp_path / "missing") is None
    assert detect(tmp_path / "none", _own(tmp_path, "4:memory:/\n")) is None


def test_groups_an_agent_no_longer_running_left_behind_are_removed(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup"
    for controller in ("memory", "pids"):
        (mount / controller / PARENT).mkdir(parents=True)
        (mount / controller / "cgroup.procs").write_text("")
    dead = 2**22 + 7  # above pid_max's default: no such process
    stale = mount / "pids" / PARENT / f"{dead}-abc"
    mine = mount / "pids" / PARENT / f"{os.getpid()}-abc"
    stale.mkdir()
    mine.mkdir()

    detect(mount, _own(tmp_path, "4:memory:/\n8:pids:/\n"))

    assert not stale.exists() and mine.exists()
