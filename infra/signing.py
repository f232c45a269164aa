"""Presigned storage URLs: an HMAC over method, client, key and expiry.

A provider never holds a client's credentials; the control plane hands it URLs
that allow one method on one object until a deadline, as S3 presigning does.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote


def sign(secret: bytes, method: str, client_id: str, key: str, expires: int) -> str:
    message = f"{method.upper()}\n{client_id}\n{key}\n{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def presigned_url(
    secret: bytes, base_url: str, method: str, client_id: str, key: str, expires: int
) -> str:
    sig = sign(secret, method, client_id, key, expires)
    return (
        f"{base_url.rstrip('/')}/storage/{quote(client_id)}/{quote(key)}"
        f"?expires={expires}&sig={sig}"
    )


def verify(
    secret: bytes, method: str, client_id: str, key: str, expires: int, sig: str, now: float
) -> bool:
    if now > expires:
        return False
    return hmac.compare_digest(sign(secret, method, client_id, key, expires), sig)
