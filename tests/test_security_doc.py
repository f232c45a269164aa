"""docs/security.md names a test for every attack: each one it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHORT = {"adv/": "adversarial/", "live/": "liveness/"}
NAMED = re.compile(r"((?:[\w.]+/)*[\w.]+\.py)(?:::(\w+))?")


def named_tests() -> list[tuple[str, str | None]]:
    text = (ROOT / "docs" / "security.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r"\| \d+[a-z]? \|", line)]
    found = []
    for row in rows:
        tests_cell = row.rstrip(" |").rsplit("|", 1)[-1]
        found += NAMED.findall(tests_cell)
    return found


def test_every_test_the_threat_model_names_exists() -> None:
    named = named_tests()
    assert len(named) > 100, len(named)
    missing = []
    for path, name in named:
        for short, long in SHORT.items():
            if path.startswith(short):
                path = long + path[len(short):]
        file = ROOT / "tests" / path
        if not file.is_file():
            missing.append(f"{path}: no such file")
        elif name and not re.search(rf"def {name}\b", file.read_text()):
            missing.append(f"{path}::{name}: no such test")
    assert not missing, missing
