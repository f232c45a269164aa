"""Checkpoints: a job's `checkpoint/` directory, uploaded while it runs, staged on a resume.

The convention a job follows: it writes files under `checkpoint/` in its working
directory (`GPGPU_CHECKPOINT_DIR` names it) and, when it starts, resumes from what
it finds there. Each file should be replaced whole (write a temporary name that
starts with '.', then rename it into place): names starting with '.' are never
uploaded, and a file that changes while it is read waits for the next round.

While the job runs, `CheckpointUploader` looks at the directory every few seconds
(the plan's interval). When a file changed, it uploads the changed files through
the presigned PUT URLs of the plan's slots, then the manifest
(`jobs/<job_id>/checkpoint/<attempt>/manifest.json`: path, key, digest and size of
every file) last. Each attempt has its own slots and manifest, written only through
that run's grants while it is live: no other run, and no client, can name what a
later attempt resumes from.
A slot that the last manifest names is never written, so storage always holds one
complete checkpoint and a reader of the manifest never sees half of a newer one.
A checkpoint over the plan's size or file limits is not uploaded; the job goes on
and its log says why. Paths go through the same checks as outputs
(transfer.relative_path, transfer.safe_path): nothing outside the job's directory
is ever read.

When a provider is lost, the control plane reads the manifest of the latest earlier
attempt that has one, checks each file
against storage, and stages the files into the next attempt's `checkpoint/` as
ordinary inputs (digest checked): the job finds them and resumes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from protocol import digest as digests
from worker_gpu.transfer import (
    DIGEST_HEADER,
    HttpFailure,
    UnsafePath,
    digest_file,
    relative_path,
    renewed,
    safe_path,
    tls,
    upload_file,
)
from workflows.contracts_gpu import CheckpointPlan, ManifestEntry, OutputTransfer

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"  # inside the job's working directory
ENV_VAR = "GPGPU_CHECKPOINT_DIR"
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)

# What identifies a file's version without reading it: a rename or a rewrite changes it.
Stamp = tuple[int, int, int, int]


class _Stopped(Exception):
    pass


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


@dataclass
class _Uploaded:
    """A file of the last complete checkpoint: where it is, and the version it came from."""

    entry: ManifestEntry
    stamp: Stamp | None  # None: staged from an earlier attempt, not yet looked at


class CheckpointUploader:
    """Uploads `work/checkpoint/` as it changes; `poll()` is one round, `start()` a thread."""

    def __init__(
        self,
        plan: CheckpointPlan,
        work: Path,
        *,
        job_id: str = "",
        attempt: int = 0,
        client: httpx.Client | None = None,
    ) -> None:
        self.plan = plan
        self.work = work
        self.job_id = job_id
        self.attempt = attempt
        self._client = client
        self._own_client = client is None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The last complete checkpoint, by path under checkpoint/.
        self._committed = {e.path: _Uploaded(e, None) for e in plan.resumed}
        self.uploads = 0  # manifests written
        self.notes: list[str] = []  # for the job's log, each said once

    @property
    def directory(self) -> Path:
        return self.work / CHECKPOINT_DIR

    # -- one round -------------------------------------------------------------

    def poll(self) -> bool:
        """Upload the checkpoint if it changed; True when a new manifest was written."""
        found = self._scan()
        if found is None:
            return False
        unchanged = set(found) == set(self._committed) and all(
            self._committed[p].stamp == stamp for p, (_, stamp) in found.items()
        )
        if unchanged:
            return False
        total = sum(stamp[1] for _, stamp in found.values())
        if len(found) > self.plan.max_files:
            self._note(
                f"checkpoint not uploaded: checkpoint/ holds {len(found)} files, more than "
                f"the {self.plan.max_files} allowed"
            )
            return False
        if total > self.plan.max_bytes:
            self._note(
                f"checkpoint not uploaded: checkpoint/ holds {_size(total)}, more than the "
                f"{_size(self.plan.max_bytes)} allowed (GPGPU_CHECKPOINT_MAX_BYTES)"
            )
            return False
        try:
            entries = self._upload_changed(found)
        except _Stopped:
            return False
        if entries is None:
            return False
        if {p: u.entry for p, u in entries.items()} == {
            p: u.entry for p, u in self._committed.items()
        }:
            self._committed = entries  # touched or staged files, the same bytes: nothing new
            return False
        self._write_manifest([u.entry for u in entries.values()])
        self._committed = entries
        self.uploads += 1
        log.info(
            "job %s: checkpoint %d uploaded (%d files, %s)",
            self.job_id,
            self.uploads,
            len(entries),
            _size(total),
        )
        return True

    def _scan(self) -> dict[str, tuple[Path, Stamp]] | None:
        """Every complete regular file under checkpoint/, by relative path; None: no dir."""
        root = self.directory
        try:
            safe_path(self.work, CHECKPOINT_DIR)
        except UnsafePath:
            self._note("checkpoint not uploaded: checkpoint/ leaves the job directory")
            return None
        if not root.is_dir() or root.is_symlink():
            return None
        found: dict[str, tuple[Path, Stamp]] = {}
        for rel in _walk(root):
            name = f"{CHECKPOINT_DIR}/{rel}"
            try:
                relative_path(name)
                path = safe_path(self.work, name)
                st = path.lstat()
            except UnsafePath:
                self._note(f"checkpoint file {name!r} leaves the job directory; skipped")
                continue
            except OSError:
                continue  # gone since the walk: the next round sees what replaced it
            if path.is_symlink() or not path.is_file():
                continue
            found[rel] = (path, _stamp(st))
        return found

    def _upload_changed(self, found: dict[str, tuple[Path, Stamp]]) -> dict[str, _Uploaded] | None:
        """Upload what changed into free slots; the new checkpoint, or None to try again later."""
        in_use = {u.entry.key for u in self._committed.values()}
        free = (s for s in self.plan.slots if s.key not in in_use)
        entries: dict[str, _Uploaded] = {}
        for rel, (path, stamp) in sorted(found.items()):
            before = self._committed.get(rel)
            if before is not None and before.stamp == stamp:
                entries[rel] = before
                continue
            digest, size = digest_file(path, self._check_stop)
            if _stamp(path.lstat()) != stamp:
                return None  # being written: wait for a round where it holds still
            if before is not None and (before.entry.digest, before.entry.size) == (digest, size):
                entries[rel] = _Uploaded(before.entry, stamp)  # touched, not changed
                continue
            slot = next(free, None)
            if slot is None:  # cannot happen with 2 x max_files slots; never overwrite
                self._note("checkpoint not uploaded: no upload slot left")
                return None
            if not self._put_file(slot, rel, path, digest, size):
                return None
            entries[rel] = _Uploaded(ManifestEntry(rel, slot.key, digest, size), stamp)
        return entries

    def _put_file(self, slot: OutputTransfer, rel: str, path: Path, digest: str, size: int) -> bool:
        try:
            upload_file(
                self._http(), slot.url, path, digest=digest, size=size, on_chunk=self._check_stop
            )
        except (HttpFailure, httpx.HTTPError) as err:
            # A file rewritten during the upload no longer matches its X-Digest and is refused.
            log.warning("job %s: checkpoint file %s not uploaded: %s", self.job_id, rel, err)
            return False
        return True

    def _write_manifest(self, entries: list[ManifestEntry]) -> None:
        body = manifest_bytes(self.job_id, self.attempt, entries)
        response = self._http().put(
            renewed(self._http(), self.plan.manifest_url, "PUT"),
            content=body,
            headers={DIGEST_HEADER: digests.of_bytes(body)},
        )
        if not response.is_success:
            raise HttpFailure("PUT", response.status_code, response.text[:500])

    # -- the thread -------------------------------------------------------------

    def start(self) -> CheckpointUploader:
        self._thread = threading.Thread(
            target=self._loop, name=f"checkpoint-{self.job_id}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop now, abandoning an upload in flight (storage still holds the last checkpoint)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> CheckpointUploader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.plan.interval_s):
            try:
                self.poll()
            except (HttpFailure, httpx.HTTPError, OSError) as err:
                log.warning("job %s: checkpoint round failed: %s", self.job_id, err)
            except Exception:
                log.exception("job %s: checkpoint uploader stopped", self.job_id)
                return

    # -- helpers -----------------------------------------------------------------

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=HTTP_TIMEOUT, verify=tls())
        return self._client

    def _check_stop(self, _n: int) -> None:
        if self._stop.is_set():
            raise _Stopped()

    def _note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
            log.warning("job %s: %s", self.job_id, message)


def _walk(root: Path) -> Iterator[str]:
    """Relative posix paths of the files under `root`, skipping names that start with '.'."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(folder).relative_to(root)
        for name in sorted(files):
            if not name.startswith("."):
                yield (base / name).as_posix()


def manifest_bytes(job_id: str, attempt: int, entries: list[ManifestEntry]) -> bytes:
    """The manifest as stored: what the control plane reads back on the next attempt."""
    files = [
        {"path": e.path, "key": e.key, "digest": e.digest, "size": e.size}
        for e in sorted(entries, key=lambda e: e.path)
    ]
    doc = {"job_id": job_id, "attempt": attempt, "files": files}
    return json.dumps(doc, indent=1).encode()


def resumed_note(plan: CheckpointPlan) -> str:
    """A line for the job's log when the run started from an earlier checkpoint."""
    total = sum(e.size for e in plan.resumed)
    n = len(plan.resumed)
    return (
        f"started from the checkpoint of attempt {plan.resumed_from_attempt} "
        f"({n} file{'s' if n != 1 else ''}, {_size(total)})"
    )
