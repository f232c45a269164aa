"""The control plane's connection to Temporal: mTLS when certificates are configured."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.service import TLSConfig

from infra.settings import Settings
from infra.temporal import tls_config


def test_plain_tcp_without_certificates(tmp_path: Path) -> None:
    assert tls_config(Settings(home=tmp_path)) is False


def test_mutual_tls_with_a_certificate_and_key(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_bytes(f"-----{name}-----".encode())
    settings = Settings(home=tmp_path, temporal_tls_ca=tmp_path / "ca.pem",
                        temporal_tls_cert=tmp_path / "cert.pem",
                        temporal_tls_key=tmp_path / "key.pem",
                        temporal_tls_server_name="temporal.internal")

    tls = tls_config(settings)

    assert isinstance(tls, TLSConfig)
    assert tls.server_root_ca_cert == b"-----ca.pem-----"
    assert tls.client_cert == b"-----cert.pem-----"
    assert tls.client_private_key == b"-----key.pem-----"
    assert tls.domain == "temporal.internal"


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_bytes(b"x")
    with pytest.raises(ValueError, match="GPGPU_TEMPORAL_TLS_KEY"):
        tls_config(Settings(home=tmp_path, temporal_tls_cert=tmp_path / "cert.pem"))
