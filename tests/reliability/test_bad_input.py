"""2,000 generated bad requests to the real API app: refused by name, never a 5xx, never recorded.

The app is `api.app.create_app` itself, run in this process (its lifespan, its threads, a
SQLite event store, a real Temporal dev server), reached through httpx's ASGI transport.
Hypothesis generates job specs (wrong types, huge values, deep nesting, unicode, path
tricks in input keys, input names and output paths, huge strings), GraphQL documents
(unknown fields and arguments, wrong literal types, broken syntax, junk) and storage
keys. Every answer must be below 500; every refusal must name what it refuses (the
field, argument, variable or key, or the place in the document); a refused submit must
leave the event log as it was. Request counts per property: specs 900, documents 600,
variables 200, storage keys 300 (2,000), plus the fixed cases below them.

Limits: a too-deep, too-long or too-aliased document is refused with the limit named
(api/limits.py); an upload past the client's storage quota is refused with 413 and
nothing is stored.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest
import strawberry
from graphql import GraphQLError, get_introspection_query, parse, validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.limits import LIMIT_EXTENSIONS, MAX_ALIASES, MAX_DEPTH, MAX_TOKENS
from infra.settings import Settings
from protocol.spec import SpecError, parse_job_spec
from tests.support.api_server import AsgiApi
from tests.support.graphql import SUBMIT

pytestmark = pytest.mark.e2e

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
QUOTA = 256 * 1024
VALID = {"name": "ok", "command": ["true"], "max_price_per_gpu_hour": "1", "timeout": "1m"}
# Not "priority": a priority the queue lacks is refused under the wrong field (see
# test_a_priority_the_queue_lacks_is_refused_under_priority).
SPEC_FIELDS = ["name", "command", "image", "network", "queue", "verification",
               "outputs", "resources", "max_price_per_gpu_hour", "timeout", "env", "inputs"]
RESOURCE_FIELDS = ["gpus", "gpu_model", "min_gpu_memory_gb", "region", "min_reputation"]
REQUIRED = {"name", "command", "max_price_per_gpu_hour"}
PROPERTY = settings(deadline=None, database=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[AsgiApi]:
    home = tmp_path_factory.mktemp("bad-input")
    # No worker serves this task queue: a spec that is accepted starts a workflow that waits.
    # Its client may hold all it submits in escrow, and keep every job it submits live.
    settings = Settings(home=home, temporal_address=temporal_server,
                        control_task_queue=f"bad-input-{uuid.uuid4().hex[:8]}",
                        storage_quota_bytes=QUOTA, starting_balance_micro=10**15,
                        max_live_jobs_per_client=1_000_000)
    running = AsgiApi(settings)
    try:
        yield running
    finally:
        running.close()


def sign_up(api: AsgiApi, name: str) -> tuple[str, str]:
    r = api.graphql(None, """mutation($e: String!) { signUp(email: $e, password: "a password",
        roles: ["client"]) { ... on Session { token user { clientId } } } }""",
        e=f"{name}@bad-input.test")
    data = r.json()["data"]["signUp"]
    return data["token"], data["user"]["clientId"]


@pytest.fixture(scope="module")
def mallory(api: AsgiApi) -> tuple[str, str]:
    token, client_id = sign_up(api, "mallory")
    r = api.graphql(token, SUBMIT, s=VALID)  # opens the account: later submits add only jobs
    assert r.json()["data"]["submitJob"]["__typename"] == "JobSubmitted", r.text
    return token, client_id


def body_of(r: httpx.Response) -> Any:
    assert r.status_code < 500, f"{r.status_code}: {r.text[:500]}"
    try:
        return r.json()
    except ValueError:
        raise AssertionError(f"{r.status_code} without a JSON body: {r.text[:300]}") from None


# Generated values

JUNK_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=200),
    st.sampled_from(["", " ", "\x00", "a\x00b", "é" * 70, "🚀" * 64, "\u202e", "null", "NaN",
                     "${HOME}", "$(reboot)", "' OR 1=1 --", "<script>", "%00", "%2e%2e"]),
    st.integers(1, 6).map(lambda n: "x" * 10**n),  # up to a megabyte
)
PATH_TRICK = st.one_of(
    st.sampled_from([
        "../x", "..", ".", "a/../../b", "/etc/passwd", "a//b", "a/", "./a", "a/./b", "a\\b",
        "..\\..\\x", "a\x00b", "~/x", "a/..", "%2e%2e/x", "\u2025/x", "jobs/../../x", "",
        "con", "a" * 1025, "/".join(["d"] * 600), "é/ü", ".hidden", "a\nb",
    ]),
    st.lists(st.sampled_from(["..", ".", "a", "", "b c", "é"]), min_size=1, max_size=6)
    .map("/".join),
)
SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30),
    st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True), JUNK_TEXT,
)


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for n in range(depth):
        value = {"a": value} if n % 2 else [value]
    return value


JUNK = st.one_of(
    SCALAR,
    st.lists(SCALAR, max_size=5),
    st.dictionaries(st.text(max_size=10), SCALAR, max_size=5),
    st.tuples(st.integers(2, 200), SCALAR).map(lambda t: nested(*t)),  # JSON below 1,000 deep
    st.integers(1, 5).map(lambda n: ["x"] * 10**n),
)


@st.composite
def bad_specs(draw: st.DrawFn) -> Any:
    spec: dict[str, Any] = dict(VALID)
    kind = draw(st.sampled_from([
        "junk_field", "unknown_field", "path", "resources", "missing", "not_a_mapping",
        "several",
    ]))
    if kind == "not_a_mapping":
        return draw(st.one_of(SCALAR, st.lists(SCALAR, max_size=3)))
    if kind in ("junk_field", "several"):
        for field in draw(st.lists(st.sampled_from(SPEC_FIELDS), min_size=1, max_size=3)):
            spec[field] = draw(JUNK)
    if kind in ("unknown_field", "several"):
        spec[draw(st.text(min_size=1, max_size=30).filter(lambda k: k not in SPEC_FIELDS))] = (
            draw(JUNK))
    if kind == "path":
        trick = draw(PATH_TRICK)
        where = draw(st.sampled_from(["outputs", "input_key", "input_name", "env", "queue",
                                      "image", "name"]))
        if where == "outputs":
            spec["outputs"] = [trick]
        elif where == "input_key":
            spec["inputs"] = [{"key": trick}]
        elif where == "input_name":
            spec["inputs"] = [{"key": "data.bin", "name": trick}]
        elif where == "env":
            spec["env"] = {trick: "x"}
        else:
            spec[where] = trick
    if kind == "resources":
        spec["resources"] = draw(st.one_of(
            JUNK, st.dictionaries(st.sampled_from([*RESOURCE_FIELDS, "colour"]), JUNK,
                                  min_size=1, max_size=3)))
    if kind == "missing":
        for field in draw(st.lists(st.sampled_from(sorted(REQUIRED)), min_size=1, max_size=3)):
            spec.pop(field, None)
    return spec


def local_verdict(spec: Any) -> list[tuple[str, str]] | None:
    """What protocol/spec.py says of the spec on its own: its errors, or None if valid."""
    try:
        parse_job_spec(spec)
    except SpecError as err:
        return err.errors
    return None


def top_fields(spec: Any) -> set[str]:
    return set(spec) if isinstance(spec, dict) else set()


@settings(PROPERTY, max_examples=900)
@given(spec=bad_specs())
def test_bad_job_specs_are_refused_by_field_and_record_nothing(
    api: AsgiApi, mallory: tuple[str, str], spec: Any
) -> None:
    token, _ = mallory
    before = api.notifications()
    r = api.graphql(token, SUBMIT, s=spec)
    if r.status_code == 413:  # past the body limit (api/body_limit.py): refused unread
        assert r.json()["detail"].startswith("a request body may be at most 1 MiB"), r.text
        assert api.notifications() == before
        return
    body = body_of(r)
    if spec is None:  # JSON! refuses null before the resolver: the error names the variable
        assert all("'$s'" in e["message"] for e in body["errors"]), body
        assert api.notifications() == before
        return
    assert "errors" not in body, f"a refusal must be a SpecRejected naming the field: {body}"
    result = body["data"]["submitJob"]
    expected = local_verdict(spec)
    if result["__typename"] == "JobSubmitted":
        assert expected is None, f"accepted a spec that protocol/spec.py refuses: {expected}"
        return
    assert api.notifications() == before, "a refused spec recorded events"
    errors = result["errors"]
    assert errors, result
    allowed = top_fields(spec) | REQUIRED | {"spec", "balance"}
    for e in errors:
        assert e["message"].strip(), e
        named = any(e["field"] == k or e["field"].startswith(f"{k}.") for k in allowed)
        assert named, f"{e} names no field of the spec {sorted(allowed)}"
    if expected is not None:
        assert {f for f, _ in expected} <= {e["field"] for e in errors}
    else:  # valid on its own: refused only for what storage, the queues or escrow hold
        assert all(e["field"].startswith(("inputs.", "queue", "balance")) for e in errors), \
            errors


@pytest.mark.parametrize("priority", [3, True])
def test_a_priority_the_queue_lacks_is_refused_under_priority(
    api: AsgiApi, mallory: tuple[str, str], priority: Any
) -> None:
    """api/jobs.py files every refusal of Network.check_queue under "queue", a priority's too
    ("queue: priority: 3 is not a level of queue local/default"); True is taken as 1."""
    token, _ = mallory
    before = api.notifications()
    body = body_of(api.graphql(token, SUBMIT, s={**VALID, "priority": priority}))
    result = body["data"]["submitJob"]
    assert result["__typename"] == "SpecRejected", result
    assert [e["field"] for e in result["errors"]] == ["priority"], result
    assert api.notifications() == before


# GraphQL documents

NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
KNOWN_ROOTS = {"job", "jobs", "account", "providers", "provider", "providerEarnings", "ledger",
               "explain", "nodes", "queue", "me", "apiKeys"}


@st.composite
def bad_documents(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A document and the words an error about it must contain (one of them; [] = only a
    position in the document, as for a syntax error)."""
    kind = draw(st.sampled_from(["unknown_field", "unknown_arg", "bad_literal", "syntax",
                                 "junk", "unknown_subfield", "unknown_type"]))
    if kind == "unknown_field":
        name = draw(NAME.filter(lambda n: n not in KNOWN_ROOTS and not n.startswith("__")))
        return f"{{ {name} }}", [name]
    if kind == "unknown_subfield":
        name = draw(NAME.filter(lambda n: n not in {"id", "state", "name", "reason"}))
        return f"{{ jobs {{ id {name} }} }}", [name]
    if kind == "unknown_arg":
        name = draw(NAME.filter(lambda n: n != "limit"))
        return f"{{ jobs({name}: 1) {{ id }} }}", [name]
    if kind == "bad_literal":
        field, value = draw(st.one_of(
            st.tuples(st.sampled_from(["jobs(limit: V) { id }", "ledger(limit: V) { seq }"]),
                      st.sampled_from(['"x"', "1.5", "99999999999", "true", "[1]", "{a: 1}",
                                       "null", "-2147483649", '""'])),
            st.tuples(st.just("job(id: V) { id }"),
                      st.sampled_from(["1.5", "true", "[1]", "{a: 1}", "null", "FOO"])),
        ))
        return "{ " + field.replace("V", value) + " }", [value.strip('"'), "Int", "ID"]
    if kind == "unknown_type":
        name = draw(NAME.filter(lambda n: n not in {"Int", "String", "ID", "Boolean", "Float",
                                                    "JSON", "BigInt"}))
        return f"query($v: {name}) {{ me {{ id }} }}", [name]
    if kind == "syntax":
        good = draw(st.sampled_from(["{ jobs { id } }", "query Q($n: Int!) { jobs(limit: $n) "
                                     "{ id state } }",
                                     'query { explain(spec: {name: "x"}) { __typename } }']))
        cut = draw(st.integers(1, len(good) - 1))
        return good[:cut] + draw(st.sampled_from(["", "{", "}", "(", ")", "$", "!", "\\"])), []
    return draw(st.text(min_size=1, max_size=300)), []


def is_valid(document: str) -> bool:
    from api.schema import schema

    try:
        return not validate(schema._schema, parse(document))
    except GraphQLError:
        return False


def names_the_problem(error: dict[str, Any], words: list[str], document: str) -> bool:
    message = str(error.get("message", ""))
    if not message.strip():
        return False
    if any(w and w in message for w in words):
        return True
    # Otherwise a place in the document (a syntax error, a value of the wrong type).
    locations = error.get("locations") or []
    lines = document.split("\n")
    return any(1 <= loc["line"] <= len(lines) + 1 for loc in locations) or bool(
        re.search(r"(Syntax Error|Unexpected|Expected|exceeds|tokens|aliases)", message))


@settings(PROPERTY, max_examples=600)
@given(case=bad_documents())
def test_bad_documents_are_refused_by_name(
    api: AsgiApi, mallory: tuple[str, str], case: tuple[str, list[str]]
) -> None:
    document, words = case
    token, _ = mallory
    before = api.notifications()
    body = body_of(api.graphql(token, document))
    if not words and is_valid(document):  # junk text that happens to be a document ("{}")
        return
    assert body.get("errors"), f"{document[:200]!r} was not refused: {body}"
    for error in body["errors"]:
        assert names_the_problem(error, words, document), (
            f"{error} does not name the problem in {document[:200]!r} (expected one of {words})")
    assert api.notifications() == before


@settings(PROPERTY, max_examples=200)
@given(value=JUNK, which=st.sampled_from(["n", "id", "spec"]))
def test_bad_variables_are_refused_by_name(
    api: AsgiApi, mallory: tuple[str, str], value: Any, which: str
) -> None:
    token, _ = mallory
    document = {
        "n": "query($n: Int!) { jobs(limit: $n) { id } }",
        "id": "query($id: ID!) { job(id: $id) { id } }",
        "spec": "query($spec: JSON!) { explain(spec: $spec) { __typename "
                     "... on SpecRejected { errors { field message } } } }",
    }[which]
    before = api.notifications()
    body = body_of(api.graphql(token, document, **{which: value}))
    assert api.notifications() == before
    for error in body.get("errors") or []:
        assert f"${which}" in error["message"] or which in error["message"], error


@pytest.mark.parametrize("spec", [
    {**VALID, "env": {"A": "\ud800"}},
    {**VALID, "command": ["echo", "a\udfffb"]},
    {**VALID, "outputs": ["\udc80.txt"]},
    {**VALID, "inputs": [{"key": "\ud800"}]},
], ids=["env", "command", "outputs", "input-key"])
def test_a_lone_surrogate_is_refused_by_field(
    api: AsgiApi, mallory: tuple[str, str], spec: dict[str, Any]
) -> None:
    """JSON may carry "\\ud800", which is no Unicode text: the spec model takes it, and the
    event store (or the view's SQL) fails to encode it, so the answer is a GraphQL error
    "'utf-8' codec can't encode character..." that names no field. Either refusal passes:
    a SpecRejected naming the field, or a 400 for the whole body that says why."""
    token, _ = mallory
    before = api.notifications()
    r = api.graphql(token, SUBMIT, s=spec)
    assert api.notifications() == before
    if r.status_code == 400:  # refused at the door, for the whole body: it must say why
        assert re.search(r"surrogate|Unicode|UTF-8", r.text, re.I), r.text
        return
    body = body_of(r)
    assert "errors" not in body, body["errors"]
    result = body["data"]["submitJob"]
    assert result["__typename"] == "SpecRejected", result
    field = next(k for k in spec if k not in VALID or spec[k] != VALID[k])
    assert all(e["field"].startswith(field) for e in result["errors"]), result


# Storage keys


@settings(PROPERTY, max_examples=300)
@given(key=PATH_TRICK, encode=st.booleans())
def test_storage_keys_stay_inside_the_callers_space(
    api: AsgiApi, mallory: tuple[str, str], key: str, encode: bool
) -> None:
    token, client_id = mallory
    storage = Path(api.app.state.services.settings.storage_root).resolve()
    # httpx removes dot segments from a path; percent-encoded, they reach the server.
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        encode = True  # no client sends a control character in a URL unencoded
    path = "".join(f"%{b:02X}" for b in key.encode("utf-8", "surrogatepass")) if encode else key
    before = api.notifications()
    r = api.request("PUT", f"/storage/{client_id}/{path}", token, content=b"bytes")
    body = body_of(r)
    assert api.notifications() == before
    if r.status_code >= 400:
        detail = str(body.get("detail", ""))
        assert r.status_code in (400, 403, 404, 405, 413, 422), (r.status_code, body)
        if r.status_code == 400:
            assert detail.startswith("key:") or "key" in detail, body
        if r.status_code == 403:  # a path that left mallory's space names the other space,
            # or one under jobs/, which only the network's runs write
            assert ("storage space" in detail and "is not yours" in detail) or (
                detail.startswith("jobs/") and "written by the network's runs only" in detail
            ), body
        return
    stored = body["key"]
    # Whatever was stored is inside mallory's own space, under the key the answer names.
    assert (storage / client_id / stored).resolve().is_relative_to(storage / client_id)
    url = f"/storage/{client_id}/{quote(stored)}"
    got = api.request("GET", url, token)
    assert got.status_code == 200 and got.content == b"bytes", (stored, got.status_code)
    api.request("DELETE", url, token)


def test_a_key_that_clashes_with_a_stored_folder_is_refused_by_name(
    api: AsgiApi, mallory: tuple[str, str]
) -> None:
    """The filesystem store can't hold both "a" and "a/b": it answered 500 (IsADirectoryError,
    FileExistsError) until infra/storage.py refused such a key by name."""
    token, client_id = mallory
    assert api.request("PUT", f"/storage/{client_id}/clash/inner", token,
                       content=b"1").status_code == 200
    assert api.request("PUT", f"/storage/{client_id}/plain", token, content=b"2").status_code == 200
    for key in ("clash", "plain/inner", "clash/inner/deeper"):
        r = api.request("PUT", f"/storage/{client_id}/{key}", token, content=b"3")
        assert r.status_code == 400 and r.json()["detail"].startswith(f"key: {key!r}"), r.text
    listed = {o["key"] for o in api.request("GET", f"/storage/{client_id}", token).json()}
    assert {"clash/inner", "plain"} <= listed and not {"clash", "plain/inner"} & listed
    leftovers = [p.name for p in (Path(api.app.state.services.settings.storage_root)
                                  / client_id).rglob(".*.part")]
    assert not leftovers, leftovers


def test_a_key_part_past_255_bytes_is_refused_by_name_not_a_500(
    api: AsgiApi, mallory: tuple[str, str]
) -> None:
    """ENAMETOOLONG from the file system answered 500 until check_storage_key bounded each
    part of a key (255 bytes of UTF-8) and the whole (959)."""
    token, client_id = mallory
    for key in ("a" * 300, "d/" + "\u00e9" * 200, "/".join(["k" * 250] * 4)):
        r = api.request("PUT", f"/storage/{client_id}/{quote(key)}", token, content=b"x")
        assert r.status_code == 400, r.text
        assert r.json()["detail"].startswith(f"key: {key[:40]!r}"), r.text
        assert "bytes of UTF-8, more than the" in r.json()["detail"]
        assert api.request("GET", f"/storage/{client_id}/{quote(key)}", token).status_code == 400


def test_nothing_was_written_outside_the_client_spaces(
    api: AsgiApi, mallory: tuple[str, str]
) -> None:
    home = Path(api.app.state.services.settings.home).resolve()
    storage = (home / "storage").resolve()
    for path in storage.rglob("*"):
        assert path.resolve().parent.is_relative_to(storage), path
    for path in home.rglob("*"):
        assert path.resolve().is_relative_to(home), path


def test_another_clients_space_is_refused(api: AsgiApi, mallory: tuple[str, str]) -> None:
    token, _ = mallory
    _, victim = sign_up(api, "victim")
    r = api.request("PUT", f"/storage/{victim}/stolen.bin", token, content=b"x")
    assert r.status_code == 403 and victim in r.json()["detail"], r.text
    r = api.request("PUT", "/storage/victim/stolen.bin", None, content=b"x")
    assert r.status_code == 401, r.text


# Limits


def test_an_upload_over_the_quota_is_refused_and_not_stored(
    api: AsgiApi, mallory: tuple[str, str]
) -> None:
    token, client_id = mallory
    r = api.request("PUT", f"/storage/{client_id}/too-big.bin", token,
                    content=b"x" * (QUOTA + 1))
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert "too-big.bin" in detail and f"quota is {QUOTA} bytes" in detail, detail
    listed = api.request("GET", f"/storage/{client_id}", token).json()
    assert "too-big.bin" not in {o["key"] for o in listed}
    assert api.request("GET", f"/storage/{client_id}/too-big.bin", token).status_code == 404
    # Under the quota, the same client may still store.
    r = api.request("PUT", f"/storage/{client_id}/fits.bin", token, content=b"x" * 1024)
    assert r.status_code == 200, r.text


def test_an_upload_announced_past_the_size_limit_is_refused_unread(
    api: AsgiApi, mallory: tuple[str, str]
) -> None:
    token, client_id = mallory
    limit = Settings().max_object_bytes  # the per-object maximum by default (4 GiB)
    r = api.request("PUT", f"/storage/{client_id}/huge.bin", token, content=b"x",
                    headers={"content-length": str(limit + 1)})
    assert r.status_code == 413 and f"({limit} bytes)" in r.json()["detail"], r.text


def deep_query(depth: int) -> str:
    return "{ jobs { " + "events { " * (depth - 1) + "seq" + " }" * (depth - 1) + " } }"


def test_a_too_deep_query_is_refused_with_the_limit_named(
    api: AsgiApi, mallory: tuple[str, str]
) -> None:
    """Fails while api/schema.py builds its schema without api/limits.py's extensions."""
    token, _ = mallory
    body = body_of(api.graphql(token, deep_query(MAX_DEPTH + 5)))
    messages = [e["message"] for e in body.get("errors") or []]
    assert any(f"exceeds maximum operation depth of {MAX_DEPTH}" in m for m in messages), (
        f"no depth limit: {messages}")
    # 100 aliases of one field fit in the token limit: the alias limit refuses them.
    aliases = "{ " + " ".join(f"a{n}: me {{ id }}" for n in range(MAX_ALIASES * 5)) + " }"
    body = body_of(api.graphql(token, aliases))
    messages = [e["message"] for e in body.get("errors") or []]
    assert any(f"aliases found. Allowed: {MAX_ALIASES}" in m for m in messages), (
        f"{MAX_ALIASES * 5} aliases of one field were all resolved: {messages}")
    # 1,000 (6,000 tokens) do not: the token limit refuses them before they are parsed.
    aliases = "{ " + " ".join(f"a{n}: me {{ id }}" for n in range(MAX_ALIASES * 50)) + " }"
    body = body_of(api.graphql(token, aliases))
    messages = [e["message"] for e in body.get("errors") or []]
    assert any(f"more than {MAX_TOKENS} tokens" in m for m in messages), (
        f"{MAX_ALIASES * 50} aliases of one field were all resolved: {messages}")


def test_deeply_nested_json_is_refused_not_a_server_error(
    api: AsgiApi, mallory: tuple[str, str]
) -> None:
    """A body nested past Python's recursion limit: json.loads raises RecursionError, which
    strawberry does not catch (it answers 400 only for JSONDecodeError)."""
    token, _ = mallory
    depth = 100_000
    body = ('{"query": "{ me { id } }", "variables": {"v": ' + "[" * depth + "]" * depth
            + "}}").encode()
    r = api.request("POST", "/graphql", token, content=body,
                    headers={"content-type": "application/json"})
    assert r.status_code == 400, f"{r.status_code}: {r.text[:200]}"


# The limits module on its own: what it refuses, and that our own clients pass it


def limited_schema() -> strawberry.Schema:
    from api.scalars import BIG_INT_SCALAR, BigInt
    from api.schema import Mutation, Query, Subscription

    return strawberry.Schema(query=Query, mutation=Mutation, subscription=Subscription,
                             scalar_overrides={BigInt: BIG_INT_SCALAR},  # type: ignore[dict-item]
                             extensions=LIMIT_EXTENSIONS)


def our_documents() -> dict[str, str]:
    """Every operation client/queries.py and web/src/queries.ts send, GraphiQL's too."""
    import client.queries as cq

    docs = {f"client.{k}": v for k, v in vars(cq).items() if isinstance(v, str)
            and v.lstrip().startswith(("query", "mutation", "subscription"))}
    ts = (ROOT / "web" / "src" / "queries.ts").read_text()
    consts = {m[1]: m[2] or m[3] for m in re.finditer(
        r'const (\w+) = (?:"([^"]*)"|`([^`]*)`)', ts)}
    for n, m in enumerate(re.finditer(r"`\s*((?:query|mutation|subscription)[^`]*)`", ts)):
        docs[f"web.{n}"] = re.sub(r"\$\{(\w+)\}", lambda v: consts[v[1]], m[1])
    docs["graphiql introspection"] = get_introspection_query(
        descriptions=True, specified_by_url=True, directive_is_repeatable=True,
        schema_description=True, input_value_deprecation=True)
    return docs


LIMIT_WORDS = ("maximum operation depth", "aliases found", "tokens", "selections", "may cost")


def test_our_own_clients_documents_pass_the_limits() -> None:
    schema = limited_schema()
    docs = our_documents()
    assert len(docs) > 40, sorted(docs)
    for name, doc in docs.items():
        assert not validate(schema._schema, parse(doc)), name  # each one is a real document
        if doc.lstrip().startswith("subscription"):
            doc = "query" + doc.lstrip().removeprefix("subscription")  # same selections
        result = asyncio.run(schema.execute(doc))  # no caller: refused later, by the gates
        limited = [e.message for e in result.errors or [] if any(
            w in e.message for w in LIMIT_WORDS)]
        assert not limited, (name, limited)


def test_the_limits_refuse_deep_long_and_aliased_documents() -> None:
    schema = limited_schema()
    cases = {
        deep_query(MAX_DEPTH + 1): f"exceeds maximum operation depth of {MAX_DEPTH}",
        "{ " + " ".join(f"a{n}: me {{ id }}" for n in range(MAX_ALIASES + 1)) + " }":
            f"{MAX_ALIASES + 1} aliases found. Allowed: {MAX_ALIASES}",
        "{ me { " + "id " * MAX_TOKENS + "} }": f"more than {MAX_TOKENS} tokens",
    }
    for document, message in cases.items():
        result = asyncio.run(schema.execute(document))
        assert result.errors and any(message in e.message for e in result.errors), (
            message, result.errors)
    legit = asyncio.run(schema.execute('{ job(id: "x") { events { seq } outputs { key } } }'))
    assert [e.message for e in legit.errors or []] == [
        "unauthenticated: sign in, or send Authorization: Bearer <token>"]  # not a limit
