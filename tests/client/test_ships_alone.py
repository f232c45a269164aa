"""The SDK and the user CLI ship alone: with `client` and `protocol` only, never the server's."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
SERVER = ("domain", "infra", "api", "activities", "workflows", "worker_gpu", "ops", "readmodel",
          "bench")

# Run in a fresh interpreter where importing any server package fails, as it would where
# only the SDK is installed.
BLOCKED = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVER!r}:
            raise ImportError(f"{{name}} is a server package")
        return None
sys.meta_path.insert(0, Block())
import client, client.aio, client.calls, client.cli, client.sdk, client.watch
sys.argv = ["gpgpu", "--help"]
client.cli.main()
"""


def imported(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_no_client_module_imports_a_server_package() -> None:
    modules = sorted((ROOT / "client").rglob("*.py"))
    assert len(modules) > 10
    offending = {str(m.relative_to(ROOT)): sorted(imported(m) & set(SERVER)) for m in modules}
    assert {m: found for m, found in offending.items() if found} == {}


def test_the_user_cli_runs_without_the_server_packages() -> None:
    done = subprocess.run([sys.executable, "-c", BLOCKED], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={"COLUMNS": "100", "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert "job" in done.stdout and "storage" in done.stdout
    assert "│ admin " not in done.stdout  # the operator's commands come with ops/ only
    assert "│ up " not in done.stdout
