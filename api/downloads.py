"""The agent for a provider's machine, built from the code this API runs: no checkout, the
same code as the network.

- `GET /downloads/gpgpu-<version>-py3-none-any.whl`: a wheel, what the provider block
  installs (`pip install <API URL>/downloads/<that name>`): pip unpacks it as it is, with
  no build step (an sdist makes pip fetch setuptools and build first: ~15 s more here).
- `GET /downloads/gpgpu.tar.gz`: the same files as a source archive (an sdist).
- `GET /downloads/`: their names (`{"wheel": ..., "sdist": ...}`); the web UI's provider
  block reads the wheel's name from it, which carries the version.

Both hold the packages pyproject.toml names (`[tool.setuptools.packages.find] include`):
their .py files and the GraphQL schema, no other file that may lie in a deployed tree; the
wheel's metadata declares pyproject's dependencies and extras (a provider gets no `server`
extra: nothing of the control plane) and its console script `gpgpu`. Each is built once per
process. An API run from an installed package, with no source tree beside it, answers 404
saying so.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import io
import tarfile
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from starlette.responses import Response

ROOT = Path(__file__).resolve().parent.parent
PATH = "/downloads/gpgpu.tar.gz"
SHIPPED = (".py", ".graphql")  # code, and the schema: nothing else a package dir holds

router = APIRouter()
_built: dict[tuple[Path, str], bytes] = {}
_lock = asyncio.Lock()


@functools.cache
def _pyproject(root: Path) -> dict[str, Any]:
    """pyproject.toml as this process first read it (the archives are built once too)."""
    return tomllib.loads((root / "pyproject.toml").read_text())


def _project(root: Path) -> dict[str, Any]:
    found: dict[str, Any] = _pyproject(root)["project"]
    return found


def shipped(root: Path) -> list[Path]:
    """The package files both archives hold, in a stable order."""
    include = _pyproject(root)["tool"]["setuptools"]["packages"]["find"]["include"]
    files: list[Path] = []
    for package in sorted({pattern.rstrip("*").rstrip(".") for pattern in include}):
        files += sorted(p for p in (root / package).rglob("*") if p.is_file()
                        and p.suffix in SHIPPED and "__pycache__" not in p.parts
                        and not any(part.startswith(".") for part in p.parts))
    return files


def wheel_name(root: Path) -> str:
    project = _project(root)
    return f"{project['name']}-{project['version']}-py3-none-any.whl"


def sdist(root: Path) -> bytes:
    """The source archive of the project at root: gpgpu-<version>/..., gzip-compressed."""
    project = _project(root)
    name, version = project["name"], project["version"]
    files = [root / "pyproject.toml", root / "README.md", *shipped(root)]
    base = f"{name}-{version}"
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo(f"{base}/PKG-INFO")  # what pip reads of an sdist's metadata
        meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        info.size, info.mode = len(meta), 0o644
        tar.addfile(info, io.BytesIO(meta))
        for path in files:
            tar.add(path, f"{base}/{path.relative_to(root)}", recursive=False)
    return out.getvalue()


def _requirement(requirement: str, extra: str | None) -> str:
    """A pyproject requirement as a Requires-Dist line's value, under `extra` if given."""
    if extra is None:
        return requirement
    spec, _, marker = requirement.partition(";")
    condition = f'extra == "{extra}"'
    return f"{spec.strip()}; ({marker.strip()}) and {condition}" if marker else \
        f"{spec.strip()}; {condition}"


def metadata(root: Path) -> str:
    """The wheel's METADATA (core metadata 2.1): name, version, Python, dependencies."""
    project = _project(root)
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}",
             f"Version: {project['version']}", f"Summary: {project.get('description', '')}",
             f"Requires-Python: {project['requires-python']}"]
    lines += [f"Requires-Dist: {_requirement(r, None)}" for r in project["dependencies"]]
    for extra, requirements in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f"Requires-Dist: {_requirement(r, extra)}" for r in requirements]
    return "\n".join(lines) + "\n"


def _b64_sha256(data: bytes) -> str:
    """A RECORD line's hash: sha256, urlsafe base64 without padding (PEP 376/427)."""
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def wheel(root: Path) -> bytes:
    """The project at root as a pure-Python wheel (PEP 427): its packages, METADATA, WHEEL,
    entry_points.txt (console scripts) and RECORD (each file's sha256 and size)."""
    project = _project(root)
    dist_info = f"{project['name']}-{project['version']}.dist-info"
    entries: list[tuple[str, bytes]] = [
        (path.relative_to(root).as_posix(), path.read_bytes()) for path in shipped(root)]
    scripts = project.get("scripts", {})
    entries += [
        (f"{dist_info}/METADATA", metadata(root).encode()),
        (f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: gpgpu api/downloads.py\n"
                               b"Root-Is-Purelib: true\nTag: py3-none-any\n"),
        (f"{dist_info}/entry_points.txt", ("[console_scripts]\n" + "".join(
            f"{name} = {target}\n" for name, target in scripts.items())).encode()),
    ]
    record = "".join(f"{name},sha256={_b64_sha256(data)},{len(data)}\n"
                     for name, data in entries) + f"{dist_info}/RECORD,,\n"
    entries.append((f"{dist_info}/RECORD", record.encode()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data,
                        compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def _has_source() -> None:
    if not (ROOT / "pyproject.toml").is_file():
        raise HTTPException(404, "this API runs from an installed package, not a source tree: "
                                 "it has no source archive to serve")


async def _once(kind: str, build: Callable[[Path], bytes]) -> bytes:
    async with _lock:
        if (ROOT, kind) not in _built:
            _built[ROOT, kind] = await asyncio.to_thread(build, ROOT)
    return _built[ROOT, kind]


@router.get("/downloads/", include_in_schema=False)
async def listing() -> dict[str, str]:
    _has_source()
    return {"wheel": f"/downloads/{wheel_name(ROOT)}", "sdist": PATH}


@router.get("/downloads/{name}.whl", include_in_schema=False)
async def download_wheel(name: str) -> Response:
    _has_source()
    if f"{name}.whl" != wheel_name(ROOT):
        raise HTTPException(404, f"no such wheel: this network serves {wheel_name(ROOT)}")
    return Response(await _once("wheel", wheel), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{wheel_name(ROOT)}"',
        "Cache-Control": "no-cache"})


@router.get(PATH, include_in_schema=False)
async def download() -> Response:
    _has_source()
    return Response(await _once("sdist", sdist), media_type="application/gzip", headers={
        "Content-Disposition": 'attachment; filename="gpgpu.tar.gz"',
        "Cache-Control": "no-cache"})
