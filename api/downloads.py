"""`GET /downloads/gpgpu.tar.gz`: the project as a source archive (an sdist) built from the
code this API runs, so that a provider's machine installs the agent with
`pip install <API URL>/downloads/gpgpu.tar.gz`: no checkout, the same code as the network.

The archive holds pyproject.toml, README.md and the packages pyproject.toml names
(`[tool.setuptools.packages.find] include`): their .py files and the GraphQL schema, no
other file that may lie in a deployed tree; built once per process. An API run from an
installed package, with no source tree beside it, answers 404 saying so.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
import tomllib
from pathlib import Path

from fastapi import APIRouter, HTTPException
from starlette.responses import Response

ROOT = Path(__file__).resolve().parent.parent
PATH = "/downloads/gpgpu.tar.gz"
SHIPPED = (".py", ".graphql")  # code, and the schema: nothing else a package dir holds

router = APIRouter()
_built: dict[Path, bytes] = {}
_lock = asyncio.Lock()


def sdist(root: Path) -> bytes:
    """The source archive of the project at root: gpgpu-<version>/..., gzip-compressed."""
    project = tomllib.loads((root / "pyproject.toml").read_text())
    name, version = project["project"]["name"], project["project"]["version"]
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    top = sorted({pattern.rstrip("*").rstrip(".") for pattern in include})
    files = [root / "pyproject.toml", root / "README.md"]
    for package in top:
        files += sorted(p for p in (root / package).rglob("*") if p.is_file()
                        and p.suffix in SHIPPED and "__pycache__" not in p.parts
                        and not any(part.startswith(".") for part in p.parts))
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


@router.get(PATH, include_in_schema=False)
async def download() -> Response:
    if not (ROOT / "pyproject.toml").is_file():
        raise HTTPException(404, "this API runs from an installed package, not a source tree: "
                                 "it has no source archive to serve")
    async with _lock:
        if ROOT not in _built:
            _built[ROOT] = await asyncio.to_thread(sdist, ROOT)
    return Response(_built[ROOT], media_type="application/gzip", headers={
        "Content-Disposition": 'attachment; filename="gpgpu.tar.gz"',
        "Cache-Control": "no-cache"})
