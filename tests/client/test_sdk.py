from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from client import (
    ApiError,
    ApiUnreachable,
    AsyncGpgpuClient,
    GpgpuClient,
    IntegrityError,
    NotFoundError,
    RefusedError,
    SpecRejectedError,
)
from protocol import digest
from tests.client.fake_api import CLIENT, FakeApi, job_json

HELLO = Path(__file__).parents[2] / "examples" / "hello" / "job.yaml"


def sync_client(api: FakeApi) -> GpgpuClient:
    return GpgpuClient(api.url, CLIENT, transport=api.transport)


def test_config_comes_from_arguments_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPGPU_API_URL", "http://api.example:9000/")
    monkeypatch.setenv("GPGPU_API_KEY", "gpk_from-env")
    with GpgpuClient() as gp:
        assert (gp.api_url, gp.token, gp.client_id) == (
            "http://api.example:9000", "gpk_from-env", None)  # the space: asked of `me`
    monkeypatch.delenv("GPGPU_API_URL")
    monkeypatch.delenv("GPGPU_API_KEY")
    with GpgpuClient() as gp:
        assert (gp.api_url, gp.token) == ("http://127.0.0.1:8000", None)
    with GpgpuClient("http://x:1", "carol", api_key="gpk_given") as gp:
        assert (gp.api_url, gp.client_id, gp.token) == ("http://x:1", "carol", "gpk_given")
        assert gp._http.headers["Authorization"] == "Bearer gpk_given"


def test_a_saved_login_is_used_for_its_api_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from client.config import credentials_path, forget_credentials, save_credentials

    monkeypatch.delenv("GPGPU_API_KEY")
    path = save_credentials("http://x:1", "gps_saved", "alice@example.test")
    assert path == credentials_path() and oct(path.stat().st_mode & 0o777) == "0o600"
    with GpgpuClient("http://x:1") as gp:
        assert gp.token == "gps_saved"
    with GpgpuClient("http://elsewhere:1") as gp:
        assert gp.token is None
    monkeypatch.setenv("GPGPU_API_KEY", "gpk_env_wins")
    with GpgpuClient("http://x:1") as gp:
        assert gp.token == "gpk_env_wins"
    assert forget_credentials("http://x:1") and not forget_credentials("http://x:1")


def test_the_storage_space_is_the_callers_own(api: FakeApi) -> None:
    with GpgpuClient(api.url, transport=api.transport) as gp:
        assert gp.list_objects() == []
        assert gp.client_id == CLIENT  # from `me`


def test_upload_streams_with_its_digest_and_reports_progress(api: FakeApi, tmp_path: Path) -> None:
    local = tmp_path / "data.bin"
    local.write_bytes(b"x" * (9 << 20))
    seen: list[tuple[int, int | None]] = []

    with sync_client(api) as gp:
        obj = gp.upload(local, "datasets/data.bin", lambda d, t: seen.append((d, t)))

    b3 = digest.of_bytes(local.read_bytes())
    assert b3.startswith("blake3:")
    assert (obj.key, obj.size, obj.digest) == ("datasets/data.bin", 9 << 20, b3)
    put = api.requests[-1]
    assert put.url.path == f"/storage/{CLIENT}/datasets/data.bin"
    assert put.headers["X-Digest"] == b3
    assert put.headers["Content-Length"] == str(9 << 20)
    assert "Transfer-Encoding" not in put.headers
    assert seen == [(0, 9 << 20), (4 << 20, 9 << 20), (8 << 20, 9 << 20), (9 << 20, 9 << 20)]


def test_download_verifies_and_then_renames(api: FakeApi, tmp_path: Path) -> None:
    api.objects["outputs/j/out/result.txt"] = b"HELLO\n"
    dest = tmp_path / "got" / "result.txt"

    with sync_client(api) as gp:
        obj = gp.download("outputs/j/out/result.txt", dest)

    assert dest.read_bytes() == b"HELLO\n"
    assert obj.digest == digest.of_bytes(b"HELLO\n")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["result.txt"]


def test_a_download_that_does_not_match_leaves_nothing_behind(api: FakeApi, tmp_path: Path) -> None:
    api.objects["k"] = b"bytes"
    dest = tmp_path / "k.txt"
    dest.write_text("old content")

    with sync_client(api) as gp, pytest.raises(IntegrityError, match="expected blake3:00"):
        gp.download("k", dest, expected_digest="blake3:" + "00" * 32)

    assert dest.read_text() == "old content"
    assert [p.name for p in tmp_path.iterdir()] == ["k.txt"]


@pytest.mark.parametrize("header", [
    {"X-Digest": "blake3:" + "ab" * 32},
    {"X-Sha256": "ab" * 32},  # an API from before BLAKE3
])  # fmt: skip
def test_a_lying_server_header_is_caught(tmp_path: Path, header: dict[str, str]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"evil", headers=header)

    transport = httpx.MockTransport(handler)
    with GpgpuClient("http://x", CLIENT, transport=transport) as gp, pytest.raises(IntegrityError):
        gp.download("k", tmp_path / "k")
    assert list(tmp_path.iterdir()) == []


def test_an_older_apis_sha256_and_a_pinned_sha256_are_checked_too(tmp_path: Path) -> None:
    """An API from before BLAKE3 sends X-Sha256; an output recorded then is pinned by its
    sha256: the download is checked against both, each with its own algorithm."""
    body = b"from before\n"
    sha = hashlib.sha256(body).hexdigest()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"X-Sha256": sha})

    with GpgpuClient("http://x", CLIENT, transport=httpx.MockTransport(handler)) as gp:
        obj = gp.download("k", tmp_path / "k", expected_digest=sha)
        assert (obj.digest, (tmp_path / "k").read_bytes()) == (f"sha256:{sha}", body)
        with pytest.raises(IntegrityError, match="expected blake3:"):
            gp.download("k", tmp_path / "j", expected_digest="blake3:" + "0" * 64)
    assert not (tmp_path / "j").exists()


def test_list_delete_and_missing_objects(api: FakeApi) -> None:
    api.objects.update({"a/1": b"1", "a/2": b"22", "b/3": b"333"})
    with sync_client(api) as gp:
        assert [(o.key, o.size) for o in gp.list_objects("a/")] == [("a/1", 1), ("a/2", 2)]
        gp.delete("a/1")
        assert [o.key for o in gp.list_objects()] == ["a/2", "b/3"]
        with pytest.raises(NotFoundError, match="object 'a/1' not found"):
            gp.delete("a/1")


def test_the_wrong_caller_gets_the_api_detail(api: FakeApi) -> None:
    with (
        GpgpuClient(api.url, CLIENT, api_key="gpk_wrong", transport=api.transport) as gp,
        pytest.raises(ApiError, match="API error 401: unauthenticated"),
    ):
        gp.list_objects()


def test_submit_spec_file_uploads_inputs_then_submits(api: FakeApi) -> None:
    progress: list[str] = []
    with sync_client(api) as gp:
        job = gp.submit_spec_file(HELLO, lambda key, d, t: progress.append(key))

    assert job.id == "job-1"
    folder = HELLO.parent
    assert api.objects["inputs/hello/hello.py"] == (folder / "hello.py").read_bytes()
    assert api.objects["inputs/hello/input.txt"] == (folder / "input.txt").read_bytes()
    [spec] = api.submitted
    assert spec["inputs"] == [
        {"key": "inputs/hello/hello.py", "name": "hello.py"},
        {"key": "inputs/hello/input.txt", "name": "input.txt"},
    ]
    assert set(progress) == {"inputs/hello/hello.py", "inputs/hello/input.txt"}


def test_a_spec_the_api_refuses_names_the_file_and_field(api: FakeApi) -> None:
    api.reject = [{"field": "resources.gpu_model", "message": "no provider offers H900"}]
    with sync_client(api) as gp, pytest.raises(SpecRejectedError) as caught:
        gp.submit_spec_file(HELLO)
    assert str(caught.value) == f"{HELLO}: resources.gpu_model: no provider offers H900"


def test_cancelling_a_job_that_ended_is_refused_by_id(api: FakeApi) -> None:
    api.jobs["job-1"] = job_json("job-1", state="RUNNING")
    api.jobs["job-2"] = job_json("job-2", state="SUCCEEDED")
    with sync_client(api) as gp:
        assert gp.cancel_job("job-1").state == "RUNNING"
        with pytest.raises(RefusedError) as refused:
            gp.cancel_job("job-2")
        assert (refused.value.field, refused.value.reason) == (
            "id", "job job-2 is already SUCCEEDED")
        with pytest.raises(ApiError, match="no job job-3 of yours") as other:
            gp.cancel_job("job-3")  # not theirs: an error, not a refusal to mend
        assert not isinstance(other.value, RefusedError)


def test_an_unreachable_api_says_so(dead_url: str) -> None:
    with GpgpuClient(dead_url) as gp, pytest.raises(ApiUnreachable) as caught:
        gp.account()
    assert str(caught.value) == (f"cannot reach the GPGPU API at {dead_url}: is `make up` running?")
    with GpgpuClient(dead_url) as gp, pytest.raises(ApiUnreachable):
        list(gp.follow("job-1"))


async def test_async_client_does_the_same(api: FakeApi, tmp_path: Path) -> None:
    local = tmp_path / "in.txt"
    local.write_bytes(b"async bytes")
    async with AsyncGpgpuClient(api.url, CLIENT, transport=httpx.MockTransport(api.handle)) as gp:
        obj = await gp.upload(local, "in.txt")
        assert obj.digest == digest.of_bytes(b"async bytes")
        await gp.download("in.txt", tmp_path / "back.txt")
        assert (tmp_path / "back.txt").read_bytes() == b"async bytes"
        job = await gp.submit_spec_file(HELLO)
        assert (await gp.job(job.id)).name == "hello"
        assert [j.id for j in await gp.jobs()] == ["job-1"]
        assert (await gp.account()).balance_micro == 87_500_000
        with pytest.raises(NotFoundError):
            await gp.job("nope")
