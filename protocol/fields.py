"""The checks of one field of a job spec (protocol/spec.py): text a process can be handed,
paths, storage keys, durations, sizes; the pydantic types that apply them, and the
messages they refuse with.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationInfo

from protocol.limits import (
    MAX_COMMAND_BYTES,
    MAX_ENV_VALUE_BYTES,
    MAX_KEY_BYTES,
    MAX_LABEL_CHARS,
    MAX_PATH_BYTES,
    MAX_SEGMENT_BYTES,
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
EnvValue = Annotated[Text, utf8_at_most(MAX_ENV_VALUE_BYTES)]
# Strict: a bool or a string is refused, never read as 1 or 2.
StrictInt = Annotated[int, Field(strict=True)]
StrictFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # an int is taken


def as_recorded(info: ValidationInfo) -> bool:
    """Whether a spec is read back as the network recorded it (`JobSpec.recorded`), not as
    submitted: a bound added since must not make a job already admitted unreadable."""
    return isinstance(info.context, dict) and info.context.get("recorded") is True


def utf8_sizes(value: str, limit: int, what: str) -> None:
    """Refuse `value` past `limit` bytes of UTF-8, or with a '/'-segment past
    MAX_SEGMENT_BYTES (the longest name a file system gives a file). A lone surrogate is
    counted, not refused: check_text says what is wrong with it."""
    if (size := len(value.encode("utf-8", "surrogatepass"))) > limit:
        raise ValueError(f"{shown(value, 40)} is {size} bytes of UTF-8, more than the {limit} "
                         f"{what}")
    for part in value.split("/"):
        if (size := len(part.encode("utf-8", "surrogatepass"))) > MAX_SEGMENT_BYTES:
            raise ValueError(f"{shown(value, 40)} has a part {shown(part, 20)} of {size} bytes "
                             f"of UTF-8, more than the {MAX_SEGMENT_BYTES} a file or folder "
                             "name may have")


def check_spec_path(value: str, info: ValidationInfo) -> str:
    """A path of the spec (`outputs.N`, `inputs.N.name`): relative, inside the job's
    directory, and short enough for its storage key (an output's is
    `jobs/<job>/runs/<attempt>/<path>`) and a provider's file system."""
    if not as_recorded(info):
        utf8_sizes(value, MAX_PATH_BYTES, "a path may have (an output's storage key, "
                   f"jobs/<job>/runs/<attempt>/<path>, is at most {MAX_KEY_BYTES})")
    return check_relative_path(value)


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


def check_storage_key(value: str, *, bounded: bool = True) -> str:
    """A key inside the client's own storage space: at most MAX_KEY_BYTES of UTF-8 (S3's
    bound on `<client id>/<key>`), each part at most MAX_SEGMENT_BYTES (a file system's).
    `bounded=False`: a key as a spec recorded before those bounds (JobSpec.recorded)."""
    if not value or "\x00" in value or "\\" in value:
        raise ValueError("must be a non-empty key without NUL or '\\'")
    if bounded:
        utf8_sizes(value, MAX_KEY_BYTES, "a key may have")
    check_text(value)
    if value.startswith("/"):
        raise ValueError(f"{value!r} is absolute; keys are relative to your storage space")
    parts = value.split("/")
    if any(p in ("..", ".", "") for p in parts):
        raise ValueError(f"{value!r} is not a plain key (no '.', '..' or trailing '/')")
    return value


# Refused as outputs.N, inputs.N.name (a key has its own check: check_storage_key).
SpecPath = Annotated[str, AfterValidator(check_spec_path)]
