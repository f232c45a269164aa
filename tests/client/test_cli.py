from __future__ import annotations

import functools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from client import cli
from client.cli import common
from client.sdk import GpgpuClient
from protocol import digest
from tests.client.fake_api import CLIENT, FakeApi, event_json, happy_events, job_json

HELLO = Path(__file__).parents[2] / "examples" / "hello" / "job.yaml"
runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture
def wired(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    """The CLI's clients talk to the fake: HTTP in-process, the websocket on its port."""
    wired_client = functools.partial(GpgpuClient, transport=api.transport)
    monkeypatch.setattr(common, "GpgpuClient", wired_client)
    return api


def gpgpu(api_url: str, *args: str) -> Result:
    return runner.invoke(cli.app, ["--api", api_url, "--client", CLIENT, *args])


def test_a_bad_spec_file_is_one_line_naming_the_field(tmp_path: Path, dead_url: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\ncommand: [a]\nmax_price_per_gpu_hour: 1\nresources: {gpus: 0}\n")

    result = gpgpu(dead_url, "job", "submit", str(spec))

    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {spec}: resources.gpus: Input should be greater than or equal to 1\n"
    )
    assert result.stdout == ""


def test_a_missing_input_file_is_refused_before_contacting_the_api(
    tmp_path: Path, dead_url: str
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\ncommand: [a]\nmax_price_per_gpu_hour: 1\ninputs: [{path: a.txt}]\n")

    result = gpgpu(dead_url, "job", "submit", str(spec))

    assert result.exit_code == 2
    assert "inputs.0.path: a.txt: no such file" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        ["job", "list"],
        ["account"],
        ["providers"],
        ["job", "submit", str(HELLO)],
        ["storage", "ls"],
        ["job", "show", "j"],
    ],
)
def test_an_unreachable_api_is_one_clear_line(dead_url: str, args: list[str]) -> None:
    result = gpgpu(dead_url, *args)

    assert result.exit_code == 1
    assert result.stderr.endswith(
        f"error: cannot reach the GPGPU API at {dead_url}: is `make up` running?\n"
    )
    assert "Traceback" not in result.output


def test_submit_prints_the_job_id(wired: FakeApi) -> None:
    result = gpgpu(wired.url, "job", "submit", str(HELLO))

    assert result.exit_code == 0, result.output
    assert result.stdout == "job-1\n"
    assert "inputs/hello/input.txt" in wired.objects


def test_submit_wait_follows_the_job_and_reports_the_outcome(wired: FakeApi) -> None:
    body = b"HELLO\n"
    wired.jobs["job-1"] = job_json(
        state="SUCCEEDED",
        providerId="prov-a",
        costMicro=834,
        outputs=[
            {
                "path": "out/result.txt",
                "key": "outputs/job-1/out/result.txt",
                "digest": digest.of_bytes(body),
                "size": len(body),
            }
        ],
    )
    wired.events = happy_events()

    result = gpgpu(wired.url, "job", "submit", str(HELLO), "--wait")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "SUCCEEDED"
    assert "cost      0.000834 credits (max 12.5)" in lines
    assert "provider  prov-a" in lines
    assert "outputs   outputs/job-1/out/result.txt" in lines
    assert lines[-1] == "download  gpgpu job outputs job-1 DIR"
    assert "settle" in result.stderr  # the pipeline view


def test_submit_wait_exits_1_when_the_job_fails(wired: FakeApi) -> None:
    wired.jobs["job-1"] = job_json(state="FAILED", reason="exit code 3")
    wired.events = [event_json(1, "JobSubmitted"), event_json(2, "JobFailed", reason="exit code 3")]

    result = gpgpu(wired.url, "job", "submit", str(HELLO), "--wait")

    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == "FAILED: exit code 3"


def test_submit_wait_json_is_one_document(wired: FakeApi) -> None:
    wired.jobs["job-1"] = job_json(state="SUCCEEDED", events=happy_events())
    wired.events = happy_events()

    result = gpgpu(wired.url, "job", "submit", str(HELLO), "--wait", "--json")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["state"] == "SUCCEEDED"
    assert [e["type"] for e in doc["events"]][-1] == "JobSucceeded"


def test_a_spec_the_api_refuses_exits_2(wired: FakeApi) -> None:
    wired.reject = [{"field": "max_price_per_gpu_hour", "message": "below every offer"}]
    result = gpgpu(wired.url, "job", "submit", str(HELLO))
    assert result.exit_code == 2
    assert result.stderr.endswith(f"\nerror: {HELLO}: max_price_per_gpu_hour: below every offer\n")


def test_list_show_and_json(wired: FakeApi) -> None:
    wired.jobs["job-1"] = job_json(state="RUNNING", providerId="prov-a", events=happy_events()[:6])

    listed = gpgpu(wired.url, "job", "list")
    assert listed.exit_code == 0
    assert "job-1" in listed.stdout and "RUNNING" in listed.stdout

    as_json = gpgpu(wired.url, "job", "list", "--json")
    assert [j["id"] for j in json.loads(as_json.stdout)] == ["job-1"]

    shown = gpgpu(wired.url, "job", "show", "job-1")
    assert shown.exit_code == 0
    assert "GpusAllocated" in shown.stdout
    assert "provider prov-a, GPUs 0 at 2 credits/GPU-hour" in shown.stdout

    missing = gpgpu(wired.url, "job", "show", "nope")
    assert (missing.exit_code, missing.stderr) == (1, "error: job nope not found\n")

    # A queued job says what it waits for, every reason, as the API words them.
    wired.jobs["job-2"] = job_json("job-2", state="QUEUED", queuePosition=2, waitingFor=[
        "no provider can take it now: a: price above the job's maximum", "1 job ahead of it"])
    waiting = gpgpu(wired.url, "job", "show", "job-2")
    assert waiting.exit_code == 0
    assert "waits for" in waiting.stdout and "1 job ahead of it" in waiting.stdout
    assert "a: price above the job's maximum" in waiting.stdout


def test_an_expected_start_that_has_passed_is_not_shown(wired: FakeApi) -> None:
    """An estimate in the past tells the reader nothing ("expected start by 10 minutes ago"):
    `job show` leaves it out; one still to come it shows."""
    ahead = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    wired.jobs["job-1"] = job_json(state="QUEUED", queuePosition=1,
                                   expectedStart="2020-01-02T03:04:05+00:00")
    wired.jobs["job-2"] = job_json("job-2", state="QUEUED", queuePosition=1, expectedStart=ahead)
    passed = gpgpu(wired.url, "job", "show", "job-1")
    assert passed.exit_code == 0, passed.stderr
    assert "expected start" not in passed.stdout and "2020-01-02" not in passed.stdout
    coming = gpgpu(wired.url, "job", "show", "job-2")
    assert coming.exit_code == 0, coming.stderr
    assert f"by {ahead[:19].replace('T', ' ')} (estimate)" in coming.stdout


def test_node_waiting_shows_each_jobs_name_the_api_sends(wired: FakeApi) -> None:
    """The operator's waiting list names every job the API names (theirs or another
    client's); a job sent without a name shows "-"."""
    row = {"gpus": 1, "gpuModel": None, "priority": 0, "waitingSince": "2025-01-02T03:04:05Z",
           "expectedStart": "2020-01-02T03:04:05+00:00", "waitingFor": ["1 job ahead of it"]}
    wired.queued = [
        {**row, "position": 1, "jobId": "job-a", "name": "someone-elses", "mine": False},
        {**row, "position": 2, "jobId": "job-b", "name": "my-own", "mine": True},
        {**row, "position": 3, "jobId": "job-c", "name": None, "mine": False},
    ]
    shown = gpgpu(wired.url, "node", "waiting", "local/default")
    assert shown.exit_code == 0, shown.stderr
    lines = {line.split()[1]: line for line in shown.stdout.splitlines()
             if line.strip()[:1].isdigit()}
    assert lines["job-a"].split()[2] == "someone-elses", shown.stdout
    assert lines["job-b"].split()[2] == "my-own", shown.stdout
    assert lines["job-c"].split()[2] == "-", shown.stdout


def test_outputs_are_downloaded_and_verified(wired: FakeApi, tmp_path: Path) -> None:
    good, bad = b"HELLO\n", b"tampered"
    wired.objects.update({"outputs/j/out/result.txt": good, "outputs/j/log.txt": bad})
    wired.jobs["job-1"] = job_json(
        state="SUCCEEDED",
        outputs=[
            {
                "path": "out/result.txt",
                "key": "outputs/j/out/result.txt",
                "digest": digest.of_bytes(good),
                "size": 6,
            },
        ],
    )

    result = gpgpu(wired.url, "job", "outputs", "job-1", str(tmp_path / "dl"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "dl/out/result.txt").read_bytes() == good

    wired.jobs["job-1"]["outputs"].append(
        {"path": "log.txt", "key": "outputs/j/log.txt", "digest": "blake3:" + "0" * 64, "size": 8}
    )
    result = gpgpu(wired.url, "job", "outputs", "job-1", str(tmp_path / "dl2"))
    assert result.exit_code == 1
    assert "error: outputs/j/log.txt: downloaded bytes have digest blake3:" in result.stderr
    assert not (tmp_path / "dl2/log.txt").exists()


def test_storage_round_trip(wired: FakeApi, tmp_path: Path) -> None:
    local = tmp_path / "a.txt"
    local.write_text("some data")

    assert gpgpu(wired.url, "storage", "put", str(local), "data/a.txt").exit_code == 0
    listed = gpgpu(wired.url, "storage", "ls", "data/", "--json")
    assert [o["key"] for o in json.loads(listed.stdout)] == ["data/a.txt"]
    got = gpgpu(wired.url, "storage", "get", "data/a.txt", str(tmp_path))
    assert got.exit_code == 0
    assert got.stdout.strip() == str(tmp_path / "a.txt")
    assert gpgpu(wired.url, "storage", "rm", "data/a.txt").exit_code == 0
    assert wired.objects == {}

    missing = gpgpu(wired.url, "storage", "put", str(tmp_path / "none"), "k")
    assert (missing.exit_code, missing.stderr) == (2, f"error: {tmp_path / 'none'}: no such file\n")


def test_account(wired: FakeApi) -> None:
    result = gpgpu(wired.url, "account")
    assert result.exit_code == 0
    assert "87.5 credits" in result.stdout and "12.5 credits" in result.stdout
    doc = json.loads(gpgpu(wired.url, "account", "--json").stdout)
    assert doc == {"client_id": CLIENT, "balance_micro": 87_500_000, "escrow_micro": 12_500_000}


def test_login_keeps_the_session_token_for_this_api(wired: FakeApi) -> None:
    from client.config import credentials_path

    refused = runner.invoke(cli.app, ["--api", wired.url, "login", "--email", "a@b.test",
                                      "--password-stdin"], input="wrong\n")
    assert refused.exit_code == 1
    assert refused.stderr == "error: password: the email and password do not match an account\n"
    assert not credentials_path().exists()

    done = runner.invoke(cli.app, ["--api", wired.url, "login", "--email", "a@b.test",
                                   "--password-stdin"], input="alice's password\n")
    assert done.exit_code == 0, done.output
    assert "signed in as a@b.test (client, provider)" in done.stderr
    saved = json.loads(credentials_path().read_text())
    assert saved == {wired.url: {"token": "gps_new-session", "email": "a@b.test"}}
    assert oct(credentials_path().stat().st_mode & 0o777) == "0o600"


def test_passwd_changes_the_password_and_keeps_the_new_session(wired: FakeApi) -> None:
    from client.config import credentials_path

    login = ["--api", wired.url, "login", "--email", "a@b.test", "--password-stdin"]
    assert runner.invoke(cli.app, login, input="alice's password\n").exit_code == 0
    passwd = ["--api", wired.url, "passwd", "--password-stdin"]

    short = runner.invoke(cli.app, passwd, input="only one line\n")
    assert short.exit_code == 1
    assert short.stderr == ("error: --password-stdin: give the current password, then the "
                            "new one\n")
    wrong = runner.invoke(cli.app, passwd, input="a guess\nnew password 2\n")
    assert wrong.exit_code == 1
    assert wrong.stderr == "error: currentPassword: does not match the account's password\n"
    assert wired.password_changes == []

    done = runner.invoke(cli.app, passwd, input="alice's password\nnew password 2\n")
    assert done.exit_code == 0, done.output
    assert "password changed for a@b.test" in done.stderr
    assert wired.password_changes == ["new password 2"]
    saved = json.loads(credentials_path().read_text())
    assert saved == {wired.url: {"token": "gps_after-the-change", "email": "a@b.test"}}


def test_add_role_asks_for_the_roles_and_says_what_the_account_acts_as(wired: FakeApi) -> None:
    done = gpgpu(wired.url, "add-role", "provider", "operator")
    assert done.exit_code == 0, done.output
    assert done.stderr == "a@b.test now acts as client, provider, operator\n"
    assert wired.roles_added == [["provider", "operator"]]
    as_json = gpgpu(wired.url, "add-role", "provider", "--json")
    assert json.loads(as_json.stdout)["roles"] == ["client", "provider"]
    refused = gpgpu(wired.url, "add-role", "admin")
    assert refused.exit_code == 1
    assert refused.stderr == "error: roles: 'admin' is not one of client, provider, operator\n"


def test_keys_create_prints_the_key_once_on_stdout(wired: FakeApi) -> None:
    made = gpgpu(wired.url, "keys", "create", "gpu-box", "--scope", "provider")
    assert made.exit_code == 0, made.output
    assert made.stdout == "gpk_the-new-key-shown-once\n"
    assert "shown only now" in made.stderr
    assert wired.keys_made == [{"name": "gpu-box", "scopes": ["provider"]}]
