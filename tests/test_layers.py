"""The layers, read from the imports (`ast`, nothing is imported): data flows one way
(api -> domain -> event store -> read model -> api), the domain is pure, infra holds
adapters only, the SDK ships alone, and no two packages import each other round a circle.

Imports inside functions count as much as those at the top: a lazy import is still a
dependency. `if TYPE_CHECKING:` imports count too (a type is a dependency of the reader).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "domain", "readmodel", "workflows", "activities", "api", "infra", "ops",
            "client", "worker_gpu", "bench")
SERVER = ("domain", "readmodel", "workflows", "activities", "api", "infra", "ops")

@cache
def imports() -> dict[str, set[str]]:
    """Each project module (its path from the root) -> the project packages it imports."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "node_modules" in path.parts:
                continue
            rel = path.relative_to(ROOT).as_posix()
            found[rel] = set(_imported(ast.parse(path.read_text(), rel), package))
    return found


def _imported(tree: ast.AST, package: str) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in PACKAGES:
                    yield top
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: its own package
                yield package
            elif node.module and (top := node.module.split(".")[0]) in PACKAGES:
                yield top


def violations(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    return {
        module: sorted(used & set(forbidden))
        for module, used in imports().items()
        if module.startswith(f"{package}/") and used & set(forbidden)
    }


def test_the_reader_sees_every_package() -> None:
    seen = {module.split("/")[0] for module in imports()}
    assert {"domain", "readmodel", "workflows", "activities", "api", "infra", "client"} <= seen
    assert "domain/job.py" in imports() and "domain" not in imports()["domain/states.py"]


def test_the_reader_finds_a_violation() -> None:
    """The reader itself: an import of api inside a function is found."""
    tree = ast.parse("def f():\n    from api.schema import schema\nimport infra.db as db\n")
    assert set(_imported(tree, "domain")) == {"api", "infra"}


def test_the_protocol_imports_nothing_of_the_project() -> None:
    """protocol/ is what client and network agree on: a leaf both import."""
    assert violations("protocol", tuple(p for p in PACKAGES if p != "protocol")) == {}


def test_the_domain_imports_nothing_of_the_project_but_itself() -> None:
    others = tuple(p for p in PACKAGES if p not in ("domain", "protocol"))
    assert violations("domain", others) == {}


def test_the_read_model_imports_no_api_activities_workflows() -> None:
    assert violations("readmodel", ("api", "activities", "workflows", "ops", "client",
                                    "worker_gpu", "bench")) == {}


def test_infra_holds_adapters_only() -> None:
    forbidden = ("domain", "readmodel", "activities", "workflows", "api", "ops", "client",
                 "worker_gpu", "bench")
    assert violations("infra", forbidden) == {}


def test_the_sdk_imports_none_of_the_servers_packages() -> None:
    """The SDK and the user CLI talk to the API over HTTP; the operator tools are ops/."""
    assert violations("client", ("readmodel", "workflows", "activities", "api", "infra", "ops",
                                 "worker_gpu")) == {}


def test_the_sdk_imports_not_even_the_domain() -> None:
    """Job specs and credits are parsed with protocol/, which the SDK ships with."""
    assert violations("client", SERVER) == {}


def test_the_provider_agent_never_imports_the_control_plane() -> None:
    """It shares the steps' contracts (workflows/contracts.py) and nothing else of it."""
    assert violations("worker_gpu", ("readmodel", "activities", "api", "ops")) == {}


# The `server` extra of pyproject.toml, as the modules it installs: a provider's or client's
# `pip install <API URL>/downloads/gpgpu.tar.gz` has none of them.
SERVER_MODULES = ("temporalio", "fastapi", "starlette", "uvicorn", "strawberry", "eventsourcing",
                  "psycopg", "boto3", "botocore", "multipart", "python_multipart",
                  "prometheus_client", "argon2", "cryptography")


def test_the_agent_and_the_sdk_run_without_the_control_plane() -> None:
    """What a provider installs (pyproject's dependencies, no `server` extra) is enough: with
    the server's packages made unimportable, every module of worker_gpu, client and protocol
    imports, and the agent's settings, logging and tracing set up. (tests/web/test_browser.py
    installs the archive in a fresh virtualenv and brings the agent online with it.)"""
    code = textwrap.dedent(f"""
        import importlib, importlib.abc, pathlib, sys
        BLOCKED = {SERVER_MODULES!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)")
        sys.meta_path.insert(0, Block())
        for package in ("protocol", "client", "worker_gpu"):
            for path in sorted(pathlib.Path(package).rglob("*.py")):
                if path.name != "__main__.py":  # runs its command when imported
                    importlib.import_module(".".join(path.with_suffix("").parts))
        import worker_gpu.__main__  # the agent's entry point, run by `gpgpu provider start`
        from infra.logs import configure_logging
        from infra.settings import Settings
        from infra import tracing
        configure_logging("INFO", "json")
        Settings()
        tracing.setup("file:" + sys.argv[1], "gpu-worker", "p")
        tracing.shutdown()
        import ops.cli
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code, "/dev/null"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for module, used in imports().items():
        package = module.split("/")[0]
        graph[package] |= used - {package}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more packages (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_one() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_between_packages() -> None:
    assert circles(package_graph()) == []


# About 450 lines at most (issue 15), with a little slack: a module past it holds more than
# one concern, or a concern grown big enough for a module of its own.
MAX_MODULE_LINES = 460


def test_no_module_is_over_about_450_lines() -> None:
    long = {rel: n for rel in imports()
            if (n := len((ROOT / rel).read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: {long}"
