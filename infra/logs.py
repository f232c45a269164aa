"""Logs as one JSON object per line, each carrying the job it is about.

`GPGPU_LOG_FORMAT=json` (infra/settings.py) turns it on for the services; the
default `text` is for people at a terminal. A line has `time` (UTC, ISO 8601),
`level`, `logger` and `message`, and where known `job_id`, `workflow_id`,
`run_id`, `activity` and `attempt`: taken from temporalio's activity or workflow
context when the line was logged inside one, or from `extra={"job_id": ...}`.
Other `extra` fields are kept as they are.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from types import ModuleType
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Every attribute a plain LogRecord has: whatever else is on a record came from `extra`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName",
}
# temporalio's own loggers put their context here (activity.logger, workflow.logger).
_TEMPORAL = ("temporal_activity", "temporal_workflow", "activity_info", "workflow_info")


def _temporal(name: str) -> ModuleType | None:
    """temporalio's `activity` or `workflow` module where this process has imported it: a
    line can only be logged in an activity or workflow of a process that runs Temporal
    code, and those (the control worker; the API) import it before they configure logging.
    A provider's agent never loads it (its import was ~0.14 CPU-s of the agent's start)."""
    return sys.modules.get(f"temporalio.{name}")


def job_id_of(workflow_id: str) -> str | None:
    """A job's workflow is `job-<job_id>` (workflows/contracts.py)."""
    return workflow_id.removeprefix("job-") if workflow_id.startswith("job-") else None


def temporal_context(record: logging.LogRecord) -> dict[str, Any]:
    """The workflow or activity a line was logged in, from the record or the context."""
    found: dict[str, Any] = {}
    details = getattr(record, "temporal_activity", None)
    if isinstance(details, dict):
        found = {"workflow_id": details.get("workflow_id"),
                 "run_id": details.get("workflow_run_id"),
                 "activity": details.get("activity_type"), "attempt": details.get("attempt")}
    elif (activity := _temporal("activity")) is not None and activity.in_activity():
        info = activity.info()
        found = {"workflow_id": info.workflow_id, "run_id": info.workflow_run_id,
                 "activity": info.activity_type, "attempt": info.attempt}
    else:
        details = getattr(record, "temporal_workflow", None)
        if isinstance(details, dict):
            found = {"workflow_id": details.get("workflow_id"), "run_id": details.get("run_id"),
                     "workflow": details.get("workflow_type")}
        elif (workflow := _temporal("workflow")) is not None and workflow.in_workflow():
            winfo = workflow.info()
            found = {"workflow_id": winfo.workflow_id, "run_id": winfo.run_id,
                     "workflow": winfo.workflow_type}
    found = {k: v for k, v in found.items() if v is not None}
    if "workflow_id" in found and (job_id := job_id_of(found["workflow_id"])):
        found["job_id"] = job_id
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never raises over a value it cannot encode."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(temporal_context(record))
        for key, value in record.__dict__.items():  # `extra` wins over what was inferred
            if key not in _STANDARD and key not in _TEMPORAL and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(level: str | int = "INFO", log_format: LogFormat = "text") -> None:
    """Send the root logger's records to stderr as text or JSON lines."""
    handler = logging.StreamHandler()
    json_lines = log_format == "json"
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    # temporalio's loggers append their context to the message; a JSON line has it as fields.
    if (activity := _temporal("activity")) is not None:
        activity.logger.activity_info_on_message = not json_lines
    if (workflow := _temporal("workflow")) is not None:
        workflow.logger.workflow_info_on_message = not json_lines
    logging.basicConfig(level=level, handlers=[handler], force=True)
