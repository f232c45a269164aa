"""Signed storage grants for one run of a job: what its provider may GET and PUT.

The URLs are checked by the API (api/storage.py); infra/signing.py signs them.
"""

from __future__ import annotations

import time

from infra.settings import Settings
from infra.signing import Grant, grant_url
from protocol import digest as digests

OUTPUT_GRANT_BYTES = 64 << 30  # the most one output may hold (api.storage.MAX_UPLOAD_BYTES)


class Grants:
    """Grants for one run: its job, attempt and provider, in force for settings.grant_max_s."""

    def __init__(self, settings: Settings, client_id: str, job_id: str, attempt: int,
                 provider_id: str):
        self.secret, self.base = settings.signing_secret, settings.api_url
        self.client_id, self.job_id, self.attempt = client_id, job_id, attempt
        self.provider_id = provider_id
        self.expires = int(time.time()) + settings.grant_max_s

    def _url(self, method: str, key: str, size: int, digest: str = "", once: bool = False
             ) -> str:
        grant = Grant(method, self.client_id, key, self.expires, self.job_id, self.attempt,
                      self.provider_id, size, digest, once)
        return grant_url(self.secret, self.base, grant)

    def get(self, key: str, digest: str, size: int) -> str:
        """A GET of this object as recorded (its digest, as an event holds it, and size)."""
        return self._url("GET", key, size, digests.normal(digest))

    def put(self, key: str, max_bytes: int, once: bool = False) -> str:
        """A PUT of at most max_bytes, whose digest and size the uploader declares."""
        return self._url("PUT", key, max_bytes, once=once)
