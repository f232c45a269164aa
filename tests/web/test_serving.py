"""How the API serves the web UI: the build when there is one, else a plain page."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import api.app


def web_dir(tmp_path: Path, built: bool) -> Path:
    web = tmp_path / "web"
    (web / "fallback").mkdir(parents=True)
    (web / "fallback" / "index.html").write_text("<p>run make web</p>")
    if built:
        (web / "dist" / "assets").mkdir(parents=True)
        (web / "dist" / "index.html").write_text('<div id="app"></div>')
        (web / "dist" / "assets" / "index-1.js").write_text("console.log(1)")
        (web / "dist" / "assets" / "index-2.js").write_text("console.log(2);\n" * 200)
        (web / "dist" / "favicon.ico").write_bytes(b"\0\0\1\0icon")
    return web


def test_the_build_is_served_with_client_side_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.app, "WEB", web_dir(tmp_path, built=True))
    http = TestClient(api.app.create_app())  # no lifespan: these paths need no services
    assert http.get("/").text == '<div id="app"></div>'
    assert http.get("/assets/index-1.js").text == "console.log(1)"
    # A page of the UI's own (a reload on a job page) gets index.html; a missing file a 404.
    page = http.get("/client/jobs/5d0c2a")
    assert page.status_code == 200 and page.text == '<div id="app"></div>'
    assert http.get("/assets/gone.js").status_code == 404
    assert http.post("/client/jobs").status_code == 405


def test_assets_are_compressed_and_hashed_ones_cached_for_a_year(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.app, "WEB", web_dir(tmp_path, built=True))
    http = TestClient(api.app.create_app())
    big = http.get("/assets/index-2.js", headers={"Accept-Encoding": "gzip"})
    assert big.headers["content-encoding"] == "gzip"
    assert big.text == "console.log(2);\n" * 200  # httpx undoes the gzip
    assert int(big.headers["content-length"]) < 3200 // 4
    assert big.headers["cache-control"] == "public, max-age=31536000, immutable"
    plain = http.get("/assets/index-2.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    # index.html (and a route answered with it) names this build's assets: checked each load.
    assert http.get("/").headers["cache-control"] == "no-cache"
    assert http.get("/client/jobs").headers["cache-control"] == "no-cache"
    icon = http.get("/favicon.ico")
    assert icon.status_code == 200 and icon.content == b"\0\0\1\0icon"


def test_without_a_build_the_plain_page_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.app, "WEB", web_dir(tmp_path, built=False))
    http = TestClient(api.app.create_app())
    assert http.get("/").text == "<p>run make web</p>"
    assert http.get("/client/jobs").status_code == 404


def test_the_agent_is_served_as_a_source_archive_of_the_running_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /downloads/gpgpu.tar.gz (what the provider block installs): pyproject.toml, the
    README and every package pyproject names, as they are here; no compiled leftovers."""
    import io
    import tarfile

    import api.downloads

    http = TestClient(api.app.create_app())
    got = http.get("/downloads/gpgpu.tar.gz")
    assert got.status_code == 200 and got.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(got.content)) as tar:
        names = set(tar.getnames())
        root = api.downloads.ROOT
        agent = tar.extractfile("gpgpu-0.1.0/worker_gpu/__main__.py")
        assert agent and agent.read() == (root / "worker_gpu" / "__main__.py").read_bytes()
    assert {"gpgpu-0.1.0/PKG-INFO", "gpgpu-0.1.0/pyproject.toml", "gpgpu-0.1.0/README.md",
            "gpgpu-0.1.0/client/cli/__init__.py", "gpgpu-0.1.0/ops/cli.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.split("/")[1] in ("tests", "web", ".git", "docs")]
    # An API installed as a package, with no source tree beside it, says it has none.
    monkeypatch.setattr(api.downloads, "ROOT", tmp_path)
    missing = http.get("/downloads/gpgpu.tar.gz")
    assert missing.status_code == 404 and "no source archive" in missing.json()["detail"]


def test_the_agent_is_served_as_a_wheel_a_provider_installs_without_the_control_plane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /downloads/ names the wheel; the wheel holds the same package files as the source
    tree, a RECORD whose every hash and size is right, the console script, and metadata in
    which the control plane's packages come only with the `server` extra."""
    import base64
    import hashlib
    import io
    import zipfile

    import api.downloads

    http = TestClient(api.app.create_app())
    listing = http.get("/downloads/").json()
    name = listing["wheel"].removeprefix("/downloads/")
    assert name == "gpgpu-0.1.0-py3-none-any.whl" and listing["sdist"] == "/downloads/gpgpu.tar.gz"
    got = http.get(listing["wheel"])
    assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
    root = api.downloads.ROOT
    with zipfile.ZipFile(io.BytesIO(got.content)) as zf:
        names = set(zf.namelist())
        assert zf.read("worker_gpu/__main__.py") == (root / "worker_gpu/__main__.py").read_bytes()
        record = zf.read("gpgpu-0.1.0.dist-info/RECORD").decode().splitlines()
        for line in record:
            path, digest, size = line.rsplit(",", 2)
            if path.endswith("/RECORD"):
                continue
            data = zf.read(path)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert (digest, int(size)) == (f"sha256={want}", len(data)), path
        assert {line.rsplit(",", 2)[0] for line in record} == names
        meta = zf.read("gpgpu-0.1.0.dist-info/METADATA").decode().splitlines()
        scripts = zf.read("gpgpu-0.1.0.dist-info/entry_points.txt").decode()
    assert "gpgpu = ops.cli:main" in scripts
    plain = [m.split(": ", 1)[1] for m in meta
             if m.startswith("Requires-Dist:") and "extra ==" not in m]
    assert "httpx>=0.28" in plain
    assert not [r for r in plain if r.startswith(("temporalio", "fastapi"))]
    assert 'Requires-Dist: temporalio>=1.35; extra == "server"' in meta
    assert not [n for n in names if "__pycache__" in n or n.split("/")[0] in ("tests", "web")]
    assert http.get("/downloads/gpgpu-9.9.9-py3-none-any.whl").status_code == 404
    monkeypatch.setattr(api.downloads, "ROOT", tmp_path)
    assert http.get(listing["wheel"]).status_code == 404
