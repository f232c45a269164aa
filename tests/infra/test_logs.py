"""JSON log lines: one object per line, with the job id from the activity that logged it."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.testing import ActivityEnvironment

from infra.logs import JsonFormatter, configure_logging
from infra.process import setup_logging


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()  # temporalio's activity.logger is "temporalio.activity"
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def parsed(out: io.StringIO) -> list[dict[str, Any]]:
    text = out.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_a_line_is_one_json_object_with_the_basics(lines: io.StringIO) -> None:
    log = logging.getLogger("gpgpu.test")
    log.info("job %s queued", "j-1", extra={"job_id": "j-1", "queue": "local/default"})
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("settling failed")
    first, second = parsed(lines)
    assert first["message"] == "job j-1 queued"
    assert first["level"] == "INFO"
    assert first["logger"] == "gpgpu.test"
    assert first["time"].endswith("+00:00")
    assert first["job_id"] == "j-1"
    assert first["queue"] == "local/default"
    assert "workflow_id" not in first  # outside Temporal, nothing is made up
    assert second["level"] == "ERROR"
    assert "ValueError: bad\nthing" in second["exception"]  # the traceback stays one line


def test_inside_an_activity_the_line_names_the_job(lines: io.StringIO) -> None:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, workflow_id="job-4d2c", workflow_run_id="run-1", activity_type="settle_job",
        attempt=2,
    )

    def settle_job() -> None:  # a `def` activity logs through the plain logging module
        logging.getLogger("gpgpu.test").info("settled")
        activity.logger.info("paid")  # and through temporalio's adapter

    env.run(settle_job)
    settled, paid = parsed(lines)
    assert (settled["message"], paid["message"][:4]) == ("settled", "paid")
    for line in (settled, paid):
        assert line["job_id"] == "4d2c"
        assert line["workflow_id"] == "job-4d2c"
        assert line["run_id"] == "run-1"
        assert line["activity"] == "settle_job"
        assert line["attempt"] == 2
        assert "temporal_activity" not in line


def test_a_workflow_logger_record_names_the_job(lines: io.StringIO) -> None:
    logging.getLogger("gpgpu.test").warning("no canary", extra={"temporal_workflow": {
        "workflow_id": "job-77", "run_id": "r", "workflow_type": "JobWorkflow",
    }})
    (line,) = parsed(lines)
    assert (line["job_id"], line["workflow"], line["run_id"]) == ("77", "JobWorkflow", "r")


def test_the_setting_chooses_the_format(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        monkeypatch.setenv("GPGPU_LOG_FORMAT", "json")
        setup_logging()
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        monkeypatch.setenv("GPGPU_LOG_FORMAT", "text")
        setup_logging()
        assert not isinstance(root.handlers[0].formatter, JsonFormatter)
        configure_logging("INFO", "json")
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert not activity.logger.activity_info_on_message  # the fields carry it
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        activity.logger.activity_info_on_message = True


def test_the_provider_agent_logs_json_lines_too(tmp_path: Path) -> None:
    """The agent's own lines (here: its warning about a missing API key) follow the setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPGPU_")}
    env |= {"GPGPU_LOG_FORMAT": "json", "GPGPU_HOME": str(tmp_path),
            "GPGPU_API_URL": "http://127.0.0.1:9", "GPGPU_TEMPORAL_ADDRESS": "127.0.0.1:9"}
    agent = subprocess.Popen(
        [sys.executable, "-m", "worker_gpu", "--provider-id", "logs-json", "--simulate",
         "1xH100:80"], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    try:
        assert agent.stderr is not None
        first = agent.stderr.readline()
    finally:
        agent.kill()
        agent.wait()
    line = json.loads(first)
    assert (line["level"], line["logger"]) == ("WARNING", "worker_gpu")
    assert line["message"].startswith("GPGPU_API_KEY is not set")
