"""Where the API is and who is calling: arguments first, then GPGPU_* variables, then the
token `gpgpu login` saved (~/.config/gpgpu/credentials, one per API URL), then defaults."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

DEFAULT_API_URL = "http://127.0.0.1:8000"
# The object's digest ("blake3:<hex>", protocol/digest.py) that the API checks on upload
# and sends with a download; an API from before BLAKE3 sent a bare sha256 as X-Sha256.
DIGEST_HEADER = "X-Digest"
LEGACY_SHA256_HEADER = "X-Sha256"


def resolve_api_url(api_url: str | None = None) -> str:
    url = api_url or os.environ.get("GPGPU_API_URL") or DEFAULT_API_URL
    return url.rstrip("/")


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gpgpu" / "credentials"


def load_credentials() -> dict[str, Any]:
    """API URL -> {"token", "email"}; empty when there is no (readable) file."""
    try:
        found = json.loads(credentials_path().read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def save_credentials(api_url: str, token: str, email: str) -> Path:
    """Keep a token for this API URL, readable by this user only."""
    found = load_credentials()
    found[api_url] = {"token": token, "email": email}
    return _write(found)


def _write(found: dict[str, Any]) -> Path:
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(found, f, indent=2)
    tmp.replace(path)
    return path


def forget_credentials(api_url: str) -> bool:
    found = load_credentials()
    if found.pop(api_url, None) is None:
        return False
    with contextlib.suppress(OSError):
        _write(found)
    return True


def resolve_token(api_url: str, api_key: str | None = None) -> str | None:
    """What is sent as `Authorization: Bearer`: the argument, GPGPU_API_KEY, or the token
    `gpgpu login` saved for this API URL."""
    if api_key:
        return api_key
    if env := os.environ.get("GPGPU_API_KEY"):
        return env
    saved = load_credentials().get(api_url)
    token = saved.get("token") if isinstance(saved, dict) else None
    return token if isinstance(token, str) and token else None


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def graphql_ws_url(api_url: str) -> str:
    if api_url.startswith("https://"):
        return "wss://" + api_url.removeprefix("https://") + "/graphql"
    if api_url.startswith("http://"):
        return "ws://" + api_url.removeprefix("http://") + "/graphql"
    return api_url + "/graphql"


def storage_url(api_url: str, client_id: str, key: str | None = None) -> str:
    base = f"{api_url}/storage/{quote(client_id, safe='')}"
    return base if key is None else f"{base}/{quote(key, safe='/')}"
