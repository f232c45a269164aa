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
