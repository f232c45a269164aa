"""The README's screenshot table shows every screenshot in docs/screenshots, each page at
both sizes, and names none that is missing (tests/web/test_browser.py writes them)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "screenshots"
MAX_BYTES = 400_000  # a screenshot in the repository stays small


def test_the_readme_lists_every_screenshot_at_both_sizes() -> None:
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"\(docs/screenshots/([\w.-]+\.png)\)", readme))
    stored = {p.name for p in SHOTS.glob("*.png")}
    assert named == stored, (sorted(named - stored), sorted(stored - named))
    pages = {n.removesuffix(".png").removesuffix("-phone") for n in stored}
    assert {f"{p}{size}.png" for p in pages for size in ("", "-phone")} == stored
    rows = [line for line in readme.splitlines() if "(docs/screenshots/" in line]
    for row in rows:  # one page a row: the laptop's beside the phone's
        laptop, phone = re.findall(r"\(docs/screenshots/([\w.-]+)\.png\)", row)
        assert phone == f"{laptop}-phone", row
    big = {p.name: p.stat().st_size for p in SHOTS.glob("*.png") if p.stat().st_size > MAX_BYTES}
    assert not big, big
