"""Which of a job's declared outputs a provider reads and uploads, decided before it reads any.

A job controls its outputs' sizes, and a sparse file costs its work directory nothing
(worker_gpu/sandbox.py disk_usage counts allocated blocks) while reading it costs the whole
of its apparent size: 256 outputs of `truncate -s 20G` would have the agent hash 5 TiB.
So each declared output is stat'ed first, and only these are read:

- a regular file of the job's own (`produced_file`: no symlink on its way, one name);
- no larger than its grant lets one object be (the grant's `size`: the control plane
  grants at most GPGPU_MAX_OBJECT_BYTES, activities/control.py), which storage would
  refuse (413) only after the agent had hashed it;
- and, in the order the job declared them, while their apparent sizes (st_size) together
  stay within the job's disk allowance (JobLimits.disk_mb, the work directory's limit).

The others are missing, each with its reason (UploadResult.refused). What an upload reads is
therefore at most the disk allowance, however the files were made.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from worker_gpu.context import StepFailed
from worker_gpu.transfer import UnsafePath, relative_path
from workflows.contracts_gpu import OutputTransfer

log = logging.getLogger(__name__)


@dataclass
class Chosen:
    output: OutputTransfer
    path: Path
    size: int  # apparent, as stat'ed before any read


@dataclass
class OutputChoice:
    chosen: list[Chosen] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # path: why (also in missing)


def grant_limit(url: str) -> int | None:
    """The most bytes a PUT grant lets its object hold (its signed `size`), or None for a
    URL that names none."""
    sizes = parse_qs(urlsplit(url).query).get("size", [])
    if len(sizes) != 1 or not sizes[0].isdigit() or len(sizes[0]) > 19:
        return None
    return int(sizes[0])


def choose_outputs(work: Path, outputs: list[OutputTransfer], total_bytes: int) -> OutputChoice:
    """The outputs to read and upload, stat'ed and bounded before any is read (see above)."""
    choice = OutputChoice()
    used = 0
    for output in outputs:
        path = produced_file(work, output.path)
        if path is None:
            choice.missing.append(output.path)
            continue
        size = os.lstat(path).st_size
        limit = grant_limit(output.url)
        why = ""
        if limit is not None and size > limit:
            why = (f"output is {size} bytes, larger than {limit} bytes (the most one "
                   "object may hold); not read")
        elif used + size > total_bytes:
            why = (f"output is {size} bytes and the outputs before it {used}: past the "
                   f"job's disk allowance of {total_bytes} bytes for its outputs in all; "
                   f"not read")
        if why:
            log.warning("output %r refused: %s", output.path, why)
            choice.missing.append(output.path)
            choice.refused[output.path] = why
            continue
        used += size
        choice.chosen.append(Chosen(output, path, size))
    return choice


def produced_file(work: Path, relative: str) -> Path | None:
    """The output file the job produced, or None when it did not produce one of its own.

    Only a regular file reached without any symlink and with no other name (st_nlink 1)
    is uploaded: a job could leave a symlink to the provider's files, or a hard link to a
    file it can read but does not own, as an "output". Those count as missing, and the
    agent's log says why.
    """
    try:
        parts = relative_path(relative).parts
    except UnsafePath as err:
        raise StepFailed(str(err), type="UnsafePathError", non_retryable=True) from None
    path = work
    for part in parts:
        path = path / part
        try:
            mode = os.lstat(path)
        except OSError:
            return None
        if stat.S_ISLNK(mode.st_mode):
            log.warning("output %r: %s is a symlink; treated as missing", relative, path)
            return None
    if not stat.S_ISREG(mode.st_mode):
        return None
    if mode.st_nlink != 1:
        log.warning("output %r has %d names (a hard link); treated as missing", relative,
                    mode.st_nlink)  # fmt: skip
        return None
    return path
