"""The provider agent never talks to Temporal: it imports none of it, and is given no address."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from ops.devstack import agent_env

PACKAGE = Path(__file__).resolve().parents[2] / "worker_gpu"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_module_of_the_agent_imports_temporalio() -> None:
    sources = sorted(PACKAGE.glob("*.py"))
    assert len(sources) > 10
    offenders = {p.name: sorted(n for n in _imports(p) if n.split(".")[0] == "temporalio")
                 for p in sources}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_running_the_agent_loads_no_temporalio() -> None:
    # What the modules import in turn (infra, workflows.contracts) counts too.
    code = ("import sys, worker_gpu.__main__, worker_gpu.agent; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'temporalio'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=PACKAGE.parent, check=True)
    assert done.stdout.strip() == "[]"


def test_the_agents_environment_names_no_temporal() -> None:
    env = {"GPGPU_TEMPORAL_ADDRESS": "127.0.0.1:7233", "GPGPU_TEMPORAL_NAMESPACE": "default",
           "GPGPU_API_URL": "http://127.0.0.1:8000", "GPGPU_API_KEY": "gpk_x"}
    assert agent_env(env, "gpk_provider") == {"GPGPU_API_URL": "http://127.0.0.1:8000",
                                              "GPGPU_API_KEY": "gpk_provider"}
