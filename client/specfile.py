"""From a job spec file (YAML, local inputs) to what the API takes (inputs as storage keys).

The plan is made and checked before a single byte is uploaded: a bad field or a
missing local file is refused with the field's name, and nothing is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import yaml

from client.errors import SpecRejectedError
from protocol.spec import JobSpecFile, SpecError, parse_job_spec, parse_job_spec_file


@dataclass(frozen=True)
class PlannedUpload:
    field: str  # "inputs.N.path", to name it in errors
    local: Path
    key: str


@dataclass(frozen=True)
class SpecPlan:
    source: Path
    name: str
    spec: dict[str, Any]  # the API spec: inputs are {key, name}
    uploads: list[PlannedUpload]


def input_key(spec_name: str, target: str) -> str:
    return f"inputs/{spec_name}/{target}"


def load_spec_file(path: Path) -> JobSpecFile:
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecRejectedError([("spec", "no such file")], label) from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecRejectedError([("spec", f"cannot be read: {err}")], label) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise SpecRejectedError([("spec", f"is not valid YAML{at}")], label) from None
    except RecursionError:  # PyYAML recurses once per level: a few hundred `[` end it
        raise SpecRejectedError([("spec", "is nested too deeply to read")], label) from None
    try:
        return parse_job_spec_file(data)
    except SpecError as err:
        raise SpecRejectedError(err.errors, label) from None


def plan_spec_file(path: Path) -> SpecPlan:
    """Resolve a spec file: which local files go to which keys, and the API spec."""
    spec = load_spec_file(path)
    folder = path.parent
    uploads: list[PlannedUpload] = []
    inputs: list[dict[str, str]] = []
    errors: list[tuple[str, str]] = []
    for i, item in enumerate(spec.inputs):
        if item.path is None:
            assert item.key is not None  # the model allows exactly one of path and key
            inputs.append({"key": item.key, **({"name": item.name} if item.name else {})})
            continue
        field = f"inputs.{i}.path"
        local = folder / item.path
        if not local.is_file():
            problem = "is a folder, not a file" if local.is_dir() else "no such file"
            errors.append((field, f"{item.path}: {problem} (looked in {folder})"))
            continue
        target = item.name or PurePath(item.path).name
        key = input_key(spec.name, target)
        uploads.append(PlannedUpload(field=field, local=local, key=key))
        inputs.append({"key": key, "name": target})
    if errors:
        raise SpecRejectedError(errors, str(path))
    api_spec = spec.model_dump(mode="json", exclude={"inputs"})
    api_spec["inputs"] = inputs
    try:  # the same check the API makes, so a refusal comes before any upload
        parse_job_spec(api_spec)
    except SpecError as err:
        raise SpecRejectedError(err.errors, str(path)) from None
    return SpecPlan(source=path, name=spec.name, spec=api_spec, uploads=uploads)
