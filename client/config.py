"""Where the API is and who is calling: arguments first, then GPGPU_* variables, then defaults."""

from __future__ import annotations

import os
from urllib.parse import quote

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_CLIENT_ID = "demo"
CLIENT_HEADER = "X-Gpgpu-Client"
SHA256_HEADER = "X-Sha256"


def resolve_api_url(api_url: str | None = None) -> str:
    url = api_url or os.environ.get("GPGPU_API_URL") or DEFAULT_API_URL
    return url.rstrip("/")


def resolve_client_id(client_id: str | None = None) -> str:
    return client_id or os.environ.get("GPGPU_CLIENT") or DEFAULT_CLIENT_ID


def graphql_ws_url(api_url: str) -> str:
    if api_url.startswith("https://"):
        return "wss://" + api_url.removeprefix("https://") + "/graphql"
    if api_url.startswith("http://"):
        return "ws://" + api_url.removeprefix("http://") + "/graphql"
    return api_url + "/graphql"


def storage_url(api_url: str, client_id: str, key: str | None = None) -> str:
    base = f"{api_url}/storage/{quote(client_id, safe='')}"
    return base if key is None else f"{base}/{quote(key, safe='/')}"
