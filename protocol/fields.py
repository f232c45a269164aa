"""The checks of one field of a job spec (protocol/spec.py): text a process can be handed,
paths, storage keys, durations, sizes; the pydantic types that apply them, and the
messages they refuse with.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from protocol.limits import (
    MAX_COMMAND_BYTES,
    MAX_ENV_VALUE_BYTES,
    MAX_LABEL_CHARS,
    MAX_PATH_CHARS,
    MAX_TIMEOUT_S,
)

_DURATION = re.compile(r"\s*(\d+)\s*(s|m|h|d)?\s*")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a duration like 90, '90s', '10m' or '2h'")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError("must be a duration like 90, '90s', '10m' or '2h'")
    if not 1 <= seconds <= MAX_TIMEOUT_S:
        raise ValueError(f"must be between 1 second and {MAX_TIMEOUT_S // 86400} days")
    return seconds


def check_text(value: str) -> str:
    """Text a process can be handed: Unicode that UTF-8 can encode, without NUL."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"is not valid Unicode: a lone surrogate {value[err.start]!r} at "
                         f"character {err.start}") from None
    if (at := value.find("\x00")) >= 0:
        raise ValueError(f"must not contain a NUL character (one is at character {at})")
    return value


def shown(value: str, limit: int = 60) -> str:
    """A value for a message: its repr, cut short."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def kib(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} bytes"


def chars_at_most(limit: int) -> AfterValidator:
    def check(value: str) -> str:
        if len(value) > limit:
            raise ValueError(f"is {len(value)} characters, more than the {limit} allowed")
        return value

    return AfterValidator(check)


def utf8_at_most(limit: int) -> AfterValidator:
    def check(value: str) -> str:
        if (size := len(value.encode("utf-8"))) > limit:
            raise ValueError(f"is {size} bytes of UTF-8, more than the {kib(limit)} allowed")
        return value

    return AfterValidator(check)


def command_size(args: list[str]) -> list[str]:
    """At most MAX_COMMAND_BYTES as execve counts: each argument's bytes and its NUL."""
    if (size := sum(len(a.encode("utf-8")) + 1 for a in args)) > MAX_COMMAND_BYTES:
        raise ValueError(f"is {size} bytes (UTF-8, a NUL after each argument), more than "
                         f"the {kib(MAX_COMMAND_BYTES)} allowed")
    return args


Text = Annotated[str, AfterValidator(check_text)]
Label = Annotated[Text, chars_at_most(MAX_LABEL_CHARS)]
Command = Annotated[list[Text], AfterValidator(command_size)]
# Paths and keys: their own checks (check_relative_path, check_storage_key) refuse NUL.
PathText = Annotated[str, chars_at_most(MAX_PATH_CHARS)]
EnvValue = Annotated[Text, utf8_at_most(MAX_ENV_VALUE_BYTES)]
# Strict: a bool or a string is refused, never read as 1 or 2.
StrictInt = Annotated[int, Field(strict=True)]
StrictFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # an int is taken


def check_relative_path(value: str) -> str:
    """A path inside the job's working directory: relative, no '..', no NUL."""
    if not value or "\x00" in value or "\\" in value:
        raise ValueError("must be a non-empty relative path")
    check_text(value)
    if value.startswith("/"):
        raise ValueError(f"{value!r} is absolute; use a path relative to the job's directory")
    norm = posixpath.normpath(value)
    if norm == "." or norm.startswith("../") or norm == "..":
        raise ValueError(f"{value!r} leaves the job's directory")
    return norm


def check_storage_key(value: str) -> str:
    """A key inside the client's own storage space."""
    if not value or len(value) > 1024 or "\x00" in value or "\\" in value:
        raise ValueError("must be a non-empty key of at most 1024 characters")
    check_text(value)
    if value.startswith("/"):
        raise ValueError(f"{value!r} is absolute; keys are relative to your storage space")
    parts = value.split("/")
    if any(p in ("..", ".", "") for p in parts):
        raise ValueError(f"{value!r} is not a plain key (no '.', '..' or trailing '/')")
    return value


OutputPath = Annotated[PathText, AfterValidator(check_relative_path)]  # refused as outputs.N
