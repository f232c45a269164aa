"""Temporal payloads are encrypted with the first key, opened by any listed key, refused by
any other; payloads written before the codec pass through."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure

from infra.payload_codec import PayloadCipher, PayloadKeyError, data_converter, parse_keys
from infra.settings import Settings

OLD, NEW = secrets.token_bytes(32), secrets.token_bytes(32)


def payload(text: bytes) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=text)


async def test_a_payload_is_ciphertext_and_opens_again() -> None:
    cipher = PayloadCipher([NEW])
    (sealed,) = await cipher.encode([payload(b'{"env": "tok-secret"}')])
    assert sealed.metadata["encoding"] == b"binary/encrypted"
    assert b"tok-secret" not in sealed.SerializeToString()
    (opened,) = await cipher.decode([sealed])
    assert opened == payload(b'{"env": "tok-secret"}')
    (again,) = await cipher.encode([payload(b'{"env": "tok-secret"}')])
    assert again.data != sealed.data  # a fresh nonce each time


async def test_rotation_the_first_key_encrypts_and_every_listed_key_decrypts() -> None:
    (by_old,) = await PayloadCipher([OLD]).encode([payload(b"written before the rotation")])
    rotated = PayloadCipher([NEW, OLD])
    assert (await rotated.decode([by_old]))[0].data == b"written before the rotation"
    (by_new,) = await rotated.encode([payload(b"after")])
    assert (await PayloadCipher([NEW]).decode([by_new]))[0].data == b"after"
    with pytest.raises(PayloadKeyError, match="not among GPGPU_TEMPORAL_PAYLOAD_KEYS"):
        await PayloadCipher([OLD]).decode([by_new])


async def test_a_tampered_payload_is_refused() -> None:
    (sealed,) = await PayloadCipher([NEW]).encode([payload(b"grant")])
    sealed.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(PayloadKeyError, match="integrity"):
        await PayloadCipher([NEW]).decode([sealed])


async def test_a_payload_from_before_the_codec_passes_through() -> None:
    old = payload(b'"an old history"')
    assert await PayloadCipher([NEW]).decode([old]) == [old]


async def test_the_converter_encrypts_values_and_failure_messages() -> None:
    converter = data_converter([NEW])
    (sealed,) = await converter.encode(["tok-secret"])
    assert b"tok-secret" not in sealed.SerializeToString()
    assert await converter.decode([sealed], [str]) == ["tok-secret"]
    failure = Failure()
    await converter.encode_failure(RuntimeError("grant sig=tok-secret"), failure)
    assert b"tok-secret" not in failure.SerializeToString()
    assert "tok-secret" in str(await converter.decode_failure(failure))


def test_keys_from_the_setting_name_the_bad_entry() -> None:
    assert parse_keys(f"{NEW.hex()}, {OLD.hex()}") == [NEW, OLD]
    for bad in ("", "zz" * 32, NEW.hex()[:-2], f"{NEW.hex()},"):
        with pytest.raises(PayloadKeyError, match="GPGPU_TEMPORAL_PAYLOAD_KEYS"):
            parse_keys(bad)


def test_the_embedded_network_makes_a_private_key_and_production_must_be_given_one(
    tmp_path: Path,
) -> None:
    made = Settings(home=tmp_path).payload_keys
    path = tmp_path / "temporal-payload.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert Settings(home=tmp_path).payload_keys == made  # the same key for every process
    with pytest.raises(PayloadKeyError, match="GPGPU_TEMPORAL_PAYLOAD_KEYS is not set"):
        Settings(home=tmp_path / "prod", event_store="postgres").payload_keys  # noqa: B018
    given = Settings(home=tmp_path, event_store="postgres",
                     temporal_payload_keys=f"{NEW.hex()},{OLD.hex()}")
    assert given.payload_keys == [NEW, OLD]
    assert NEW.hex() not in repr(given)
