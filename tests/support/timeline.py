"""Where an xdist session's time went, printed at its end: each worker's modules and when it
finished (a worker that finishes long after the others is the suite's tail), and the
modules that took longest. Times are seconds from the first test's start (the workers'
collection before it is not counted). tests/conftest.py registers it in xdist's controller.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pytest

SHOWN = 15


@dataclass
class Span:
    worker: str
    start: float
    stop: float
    seconds: float = 0.0  # setup, call and teardown of its tests


class Timeline:
    def __init__(self) -> None:
        self.modules: dict[str, Span] = {}

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        node = getattr(report, "node", None)
        if node is None or not report.stop:
            return
        worker = str(node.gateway.id)
        module = report.nodeid.split("::", 1)[0]
        span = self.modules.setdefault(module, Span(worker, report.start, report.stop))
        span.start, span.stop = min(span.start, report.start), max(span.stop, report.stop)
        span.seconds += report.duration

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.modules:
            return
        first = min(s.start for s in self.modules.values())
        workers: dict[str, list[tuple[str, Span]]] = defaultdict(list)
        for module, span in sorted(self.modules.items(), key=lambda kv: kv[1].start):
            workers[span.worker].append((module, span))
        write = terminalreporter.write_line
        terminalreporter.section("xdist workers: busy, and when each finished (s from the first "
                                 "test)")
        for worker, spans in sorted(workers.items()):
            busy = sum(s.seconds for _, s in spans)
            last_module, last = spans[-1]
            write(f"{worker}: {len(spans)} modules, tests {busy:.0f} s, done at "
                  f"{last.stop - first:.0f} s; last {last_module} "
                  f"({last.start - first:.0f}-{last.stop - first:.0f} s)")
        terminalreporter.section(f"slowest {SHOWN} modules (setup, call, teardown)")
        slowest = sorted(self.modules.items(), key=lambda kv: -kv[1].seconds)[:SHOWN]
        for module, span in slowest:
            write(f"{span.seconds:7.1f}s {module} ({span.worker}, "
                  f"{span.start - first:.0f}-{span.stop - first:.0f} s)")
