"""Refusals name the exact field: an output by its index (`outputs.N`), a storage key whose
percent-escapes are not UTF-8 (`%ff%fe`, which Starlette decodes to U+FFFD U+FFFD and which
was stored under that key) refused instead of stored. Against a real API process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.network import Network, network
from tests.support.graphql import SUBMIT

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("fields"), temporal_server, []) as n:
        yield n


def test_a_refused_output_is_named_by_its_index(net: Network) -> None:
    spec = {"name": "outs", "command": "true", "max_price_per_gpu_hour": "3",
            "outputs": ["ok.txt", "/etc/passwd", "out/../../x"]}
    result = net.gql(SUBMIT, "fields", s=spec)["submitJob"]
    assert result["__typename"] == "SpecRejected", result
    assert [e["field"] for e in result["errors"]] == ["outputs.1", "outputs.2"], result


def test_a_key_with_non_utf8_escapes_is_refused_and_not_stored(net: Network) -> None:
    space = net.client_id("fields")
    for method in ("PUT", "GET", "DELETE"):
        r = net.http.request(method, f"/storage/{space}/bad-%ff%fe.bin", content=b"x",
                             headers=net.headers("fields"))
        assert r.status_code == 400, (method, r.status_code, r.text)
        assert r.json()["detail"].startswith("key: its percent-escapes are not UTF-8"), r.text
    listed = net.http.get(f"/storage/{space}", headers=net.headers("fields")).json()
    assert listed == [], listed
    # A key with real UTF-8 escapes is stored under the text they spell.
    assert net.put("fields", "caf%C3%A9.bin", b"ok")["key"] == "café.bin"
    assert net.get("fields", "café.bin") == b"ok"
