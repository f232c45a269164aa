"""Presigned storage grants: an HMAC over everything a grant allows, bound to one run.

A provider never holds a client's credentials; the control plane hands it URLs
that each allow one method on one object, for one run (job, attempt, provider),
until a deadline a few minutes away. A GET grant names the object's digest
(protocol/digest.py: "blake3:<hex>", or the sha256 of an object stored before
BLAKE3) and size; a PUT grant names the most bytes it may carry, and the uploader
declares the body's BLAKE3 digest and size (X-Digest, Content-Length), which the
storage endpoint checks while it receives the body. The signed message writes a
sha256 digest as the bare hex that grants made before BLAKE3 signed, so those
still check; "blake3:…" can never read as one. A `once` grant writes a key that does not yet
exist (a run's output): it succeeds once, and nothing replaces what it wrote.

The storage endpoint refuses a grant whose signature is not the network's, whose
deadline has passed, or whose deadline lies further than the server's maximum
(`grant_max_s`) from now, even with a valid signature: a key that leaks cannot
mint long-lived grants that this server honours.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from protocol import digest as digests

VERSION = "g2"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SIG = re.compile(r"[0-9a-f]{64}")
METHODS = ("GET", "PUT")
MAX_GRANT_BYTES = 1 << 40  # no grant is for more than 1 TiB
KEY_BYTES = 32


@dataclass(frozen=True)
class Grant:
    method: str  # GET or PUT
    client_id: str
    key: str
    expires: int  # unix seconds
    job_id: str
    attempt: int
    provider_id: str
    size: int  # GET: the object's size; PUT: the most bytes the body may hold
    digest: str = ""  # GET: the object's digest, as written; PUT: "" (the uploader declares it)
    once: bool = False  # PUT: only onto a key that does not exist yet (a run's output)

    def message(self) -> bytes:
        algorithm, _, hexpart = self.digest.partition(":")
        signed = hexpart if algorithm == "sha256" else self.digest  # as g2 grants signed it
        fields = [
            VERSION, self.method.upper(), self.client_id, self.key, str(self.expires),
            self.job_id, str(self.attempt), self.provider_id, str(self.size), signed,
            "once" if self.once else "",
        ]
        return "\n".join(fields).encode()

    def query(self) -> dict[str, str]:
        """The grant's fields as the URL carries them (client and key are in the path)."""
        q = {
            "expires": str(self.expires), "job": self.job_id, "attempt": str(self.attempt),
            "provider": self.provider_id, "size": str(self.size),
        }
        if self.digest:
            q["digest"] = self.digest
        if self.once:
            q["once"] = "1"
        return q


class GrantRefused(Exception):
    """A grant the storage endpoint does not honour; the message says why."""


def sign(secret: bytes, grant: Grant) -> str:
    return hmac.new(secret, grant.message(), hashlib.sha256).hexdigest()


def grant_url(secret: bytes, base_url: str, grant: Grant) -> str:
    query = urlencode({**grant.query(), "sig": sign(secret, grant)})
    return (
        f"{base_url.rstrip('/')}/storage/{quote(grant.client_id)}/{quote(grant.key)}?{query}"
    )


def parse_grant(method: str, client_id: str, key: str, params: dict[str, str]) -> Grant:
    """The grant a request's query carries, each field checked; GrantRefused names the field."""

    def field(name: str) -> str:
        value = params.get(name)
        if value is None:
            raise GrantRefused(f"the grant has no {name!r}")
        return value

    def integer(name: str, low: int, high: int) -> int:
        raw = field(name)
        if not raw.isdigit() or len(raw) > 19 or not low <= int(raw) <= high:
            raise GrantRefused(f"the grant's {name!r} is not a whole number in {low}-{high}")
        return int(raw)

    digest, legacy = params.get("digest", ""), params.get("sha256", "")
    if digest and legacy:
        raise GrantRefused("the grant names both a 'digest' and a 'sha256'")
    if digest and not digests.is_digest(digest):
        raise GrantRefused("the grant's 'digest' is not 'blake3:' or 'sha256:' and 64 "
                           "lowercase hex digits")
    if legacy:  # a grant made before BLAKE3
        if not _SHA256.fullmatch(legacy):
            raise GrantRefused("the grant's 'sha256' is not 64 lowercase hex digits")
        digest = f"sha256:{legacy}"
    once = params.get("once", "")
    if once not in ("", "1"):
        raise GrantRefused("the grant's 'once' is not '1'")
    job, provider = field("job"), field("provider")
    if not 0 < len(job) <= 128 or not 0 < len(provider) <= 128:
        raise GrantRefused("the grant's 'job' and 'provider' must be 1-128 characters")
    return Grant(
        method.upper(), client_id, key, integer("expires", 0, 2**63 - 1), job,
        integer("attempt", 1, 1_000_000), provider, integer("size", 0, MAX_GRANT_BYTES),
        digest, once == "1",
    )


def check(secret: bytes, grant: Grant, sig: str, now: float, max_s: int) -> None:
    """Refuse (GrantRefused) unless the network signed this grant and it is in force now.

    In force: not past its deadline, and the deadline no further than `max_s` from now.
    """
    if not _SIG.fullmatch(sig) or not hmac.compare_digest(sign(secret, grant), sig):
        raise GrantRefused("the grant's signature is not the network's")
    if now > grant.expires:
        raise GrantRefused("the grant has expired")
    if grant.expires > now + max_s:
        raise GrantRefused(
            f"the grant's deadline is more than the server's maximum of {max_s} s away"
        )


class SigningKeyError(ValueError):
    """A signing key that is missing or malformed; the message names the setting."""


def parse_signing_key(raw: str) -> bytes:
    """GPGPU_SIGNING_KEY: 64 hex digits (32 bytes)."""
    try:
        key = bytes.fromhex(raw.strip())
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise SigningKeyError(
            f"GPGPU_SIGNING_KEY is not {KEY_BYTES * 2} hex digits (make one with: python -c"
            " 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


def load_or_create_key(path: Path) -> bytes:
    """The network's signing key, made once (0600, never readable by others) and kept at `path`.

    A key file that others may read is made private again: it may have been created
    before this rule (an old checkout).
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a key another process made first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return bytes.fromhex(path.read_text().strip())
