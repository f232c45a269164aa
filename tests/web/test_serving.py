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
