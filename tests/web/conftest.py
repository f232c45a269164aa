"""Lets the browser fixture see whether its test failed (to keep a screenshot of it)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, Any]:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report
