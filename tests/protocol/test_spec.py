"""The job spec as a client writes it: what parses, and what each refusal says."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import pytest

from protocol.fields import parse_duration
from protocol.limits import (
    MAX_COMMAND_BYTES,
    MAX_ENV_BYTES,
    MAX_ENV_VALUE_BYTES,
    MAX_ENV_VARS,
    MAX_FILES,
    MAX_KEY_BYTES,
    MAX_LABEL_CHARS,
    MAX_PATH_BYTES,
    MAX_SEGMENT_BYTES,
    MAX_TIMEOUT_S,
)
from protocol.spec import (
    JobSpec,
    SpecError,
    parse_job_spec,
    parse_job_spec_file,
)

BASE: dict[str, Any] = {
    "name": "train",
    "command": "python train.py",
    "max_price_per_gpu_hour": "2",
}


def spec_with(**fields: Any) -> dict[str, Any]:
    return {**BASE, **fields}


def refusal(data: Any, parse: Any = parse_job_spec) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse(data)
    return info.value


def fields_of(err: SpecError) -> list[str]:
    return [field for field, _ in err.errors]


# What parses


def test_minimal_spec_gets_defaults() -> None:
    spec = parse_job_spec(dict(BASE))
    assert spec.name == "train"
    assert spec.command == ["/bin/sh", "-c", "python train.py"]
    assert spec.outputs == []
    assert spec.inputs == []
    assert spec.env == {}
    assert spec.resources.gpus == 1
    assert spec.resources.gpu_model is None
    assert spec.resources.min_gpu_memory_gb == 0
    assert spec.timeout_s == 600


def test_command_list_is_kept_as_given() -> None:
    spec = parse_job_spec(spec_with(command=["python", "-c", "print(1)"]))
    assert spec.command == ["python", "-c", "print(1)"]


def test_command_string_is_run_by_the_shell() -> None:
    spec = parse_job_spec(spec_with(command="echo hi && nvidia-smi"))
    assert spec.command == ["/bin/sh", "-c", "echo hi && nvidia-smi"]


@pytest.mark.parametrize(
    ("timeout", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        (" 10m ", 600),
        ("10m", 600),
        ("2h", 7200),
        ("1d", 86_400),
        ("7d", 7 * 86_400),
        (45, 45),
        (1, 1),
        (MAX_TIMEOUT_S, MAX_TIMEOUT_S),
    ],
)
def test_durations(timeout: Any, seconds: int) -> None:
    assert parse_job_spec(spec_with(timeout=timeout)).timeout_s == seconds
    assert parse_duration(timeout) == seconds


@pytest.mark.parametrize(
    ("price", "micro"),
    [("2.5", 2_500_000), ("2", 2_000_000), (3, 3_000_000), ("0.000001", 1), (0.25, 250_000)],
)
def test_price_is_exact_micro_credits(price: Any, micro: int) -> None:
    assert parse_job_spec(spec_with(max_price_per_gpu_hour=price)).max_price_micro == micro


@pytest.mark.parametrize(
    ("gpus", "timeout", "price"),
    [
        (1, "1h", "2"),  # 2 credits exactly
        (2, 90, "2.5"),  # 125_000 exactly
        (3, 7, "1"),  # 5833.33.. -> 5834
        (1, 1, "0.000001"),  # 0.00027.. -> 1
        (64, "7d", "1000"),
    ],
)
def test_max_cost_is_every_gpu_for_the_whole_timeout_rounded_up(
    gpus: int, timeout: Any, price: str
) -> None:
    spec = parse_job_spec(
        spec_with(resources={"gpus": gpus}, timeout=timeout, max_price_per_gpu_hour=price)
    )
    price_micro = int(Fraction(price) * 1_000_000)
    expected = math.ceil(Fraction(gpus * spec.timeout_s * price_micro, 3600))
    assert spec.max_cost_micro == expected


def test_max_cost_worked_examples() -> None:
    assert parse_job_spec(spec_with(timeout="1h")).max_cost_micro == 2_000_000
    cheap = spec_with(resources={"gpus": 3}, timeout=7, max_price_per_gpu_hour="1")
    assert parse_job_spec(cheap).max_cost_micro == 5834  # 5833.33... rounded up, never down
    tiny = spec_with(timeout=1, max_price_per_gpu_hour="0.000001")
    assert parse_job_spec(tiny).max_cost_micro == 1


def test_paths_are_normalised() -> None:
    spec = parse_job_spec(spec_with(outputs=["out/./model.bin", "logs/"]))
    assert spec.outputs == ["out/model.bin", "logs"]


def test_full_spec_round_trips_through_json() -> None:
    """allocate() re-validates the spec recorded on JobSubmitted; it must come back equal."""
    spec = parse_job_spec(
        spec_with(
            resources={"gpus": 2, "gpu_model": "H100", "min_gpu_memory_gb": 40},
            timeout="2h",
            outputs=["out/a.txt"],
            inputs=[{"key": "data/train.csv", "name": "in/train.csv", "size": 10}],
            env={"SEED": "1", "_X": "y"},
            max_price_per_gpu_hour="2.5",
        )
    )
    again = JobSpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec
    assert again.max_cost_micro == spec.max_cost_micro == 2 * 2 * 2_500_000
    assert again.inputs[0].target == "in/train.csv"


def test_input_target_defaults_to_the_keys_last_part() -> None:
    spec = parse_job_spec(spec_with(inputs=[{"key": "datasets/mnist/train.csv"}]))
    assert spec.inputs[0].target == "train.csv"


# What is refused, and the field each refusal names


def test_unknown_field_is_named() -> None:
    err = refusal(spec_with(resources={"gpus": 1, "colour": "red"}))
    assert err.errors == [("resources.colour", "is not a known field")]
    assert "resources.colour: is not a known field" in str(err)


def test_unknown_top_level_field_is_named() -> None:
    err = refusal(spec_with(urgency="high"))
    assert err.errors == [("urgency", "is not a known field")]


def test_missing_fields_are_required() -> None:
    err = refusal({"name": "x"})
    assert ("command", "is required") in err.errors
    assert ("max_price_per_gpu_hour", "is required") in err.errors


def test_a_field_that_wants_a_mapping_says_so_in_a_persons_words() -> None:
    """Not pydantic's "Input should be a valid dictionary or instance of InputRef"."""
    err = refusal(spec_with(inputs=["data/in.txt", 3], resources="big"))
    assert err.errors == [
        ("resources", "must be a mapping of fields, not the text 'big'"),
        ("inputs.0", 'must be a mapping of fields such as {"key": "data/in.txt"}, '
                     "not the text 'data/in.txt'"),
        ("inputs.1", "must be a mapping of fields, not a number"),
    ]
    file_err = refusal(spec_with(inputs=[None]), parse_job_spec_file)
    assert file_err.errors == [("inputs.0", "must be a mapping of fields, not null")]


def test_every_bad_field_is_reported_at_once() -> None:
    err = refusal(spec_with(resources={"gpus": 0}, timeout="soon", env={"1BAD": "x"}))
    assert sorted(fields_of(err)) == ["env", "resources.gpus", "timeout"]


@pytest.mark.parametrize("gpus", [0, -1, 65])
def test_gpu_count_out_of_range(gpus: int) -> None:
    err = refusal(spec_with(resources={"gpus": gpus}))
    assert fields_of(err) == ["resources.gpus"]


def test_gpu_count_must_be_an_integer_not_text() -> None:
    err = refusal(spec_with(resources={"gpus": "2"}))
    assert fields_of(err) == ["resources.gpus"]


def test_zero_gpus_message() -> None:
    ((field, message),) = refusal(spec_with(resources={"gpus": 0})).errors
    assert field == "resources.gpus"
    assert "greater than or equal to 1" in message


def test_negative_memory() -> None:
    ((field, message),) = refusal(spec_with(resources={"min_gpu_memory_gb": -1})).errors
    assert field == "resources.min_gpu_memory_gb"
    assert "greater than or equal to 0" in message


def test_price_with_seven_decimal_places() -> None:
    err = refusal(spec_with(max_price_per_gpu_hour="2.0000001"))
    assert err.errors == [("max_price_per_gpu_hour", "'2.0000001' has more than 6 decimal places")]


@pytest.mark.parametrize("price", ["0", 0, "0.000000", "-1", -0.5])
def test_price_must_be_positive(price: Any) -> None:
    err = refusal(spec_with(max_price_per_gpu_hour=price))
    assert err.errors == [("max_price_per_gpu_hour", f"must be more than 0 credits, got {price}")]


@pytest.mark.parametrize("price", ["two", "", "nan", "inf"])
def test_price_must_be_a_number(price: str) -> None:
    err = refusal(spec_with(max_price_per_gpu_hour=price))
    assert fields_of(err) == ["max_price_per_gpu_hour"]


@pytest.mark.parametrize("timeout", ["ten minutes", "10x", "", "1.5h", "-5", "m"])
def test_bad_duration(timeout: Any) -> None:
    err = refusal(spec_with(timeout=timeout))
    assert fields_of(err) == ["timeout"]


def test_fractional_timeout_is_refused_under_timeout() -> None:
    # pydantic reports one error per branch of the str|int union ("timeout.str", "timeout.int")
    err = refusal(spec_with(timeout=1.5))
    assert err.errors
    assert all(field.split(".")[0] == "timeout" for field in fields_of(err))


def test_bad_duration_message() -> None:
    err = refusal(spec_with(timeout="10x"))
    assert err.errors == [("timeout", "must be a duration like 90, '90s', '10m' or '2h'")]


@pytest.mark.parametrize("timeout", ["8d", "169h", MAX_TIMEOUT_S + 1, "0", 0, "0s"])
def test_timeout_outside_one_second_to_seven_days(timeout: Any) -> None:
    err = refusal(spec_with(timeout=timeout))
    assert err.errors == [("timeout", "must be between 1 second and 7 days")]


def test_parse_duration_refuses_booleans() -> None:
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration(True)


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("../x", "leaves the job's directory"),
        ("out/../../x", "leaves the job's directory"),
        ("..", "leaves the job's directory"),
        (".", "leaves the job's directory"),
        ("/abs", "is absolute"),
        ("/etc/passwd", "is absolute"),
        ("", "non-empty relative path"),
        ("a\\b", "non-empty relative path"),
        ("a\x00b", "non-empty relative path"),
    ],
)
def test_output_paths_must_stay_inside_the_job(path: str, words: str) -> None:
    ((field, message),) = refusal(spec_with(outputs=["ok.txt", path])).errors
    assert field == "outputs.1"  # which output, by its index
    assert words in message


def test_duplicate_outputs_even_after_normalising() -> None:
    err = refusal(spec_with(outputs=["out/a.txt", "out/./a.txt"]))
    assert err.errors == [("outputs", "lists the same output twice ('out/a.txt' is outputs.0 "
                                      "and outputs.1)")]


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("../x", "is not a plain key"),
        ("a/../b", "is not a plain key"),
        ("dir/", "is not a plain key"),
        ("/abs", "is absolute"),
        ("", "non-empty key"),
        ("k" * (MAX_KEY_BYTES + 1), f"more than the {MAX_KEY_BYTES} a key may have"),
        ("\u00e9" * 480, f"is 960 bytes of UTF-8, more than the {MAX_KEY_BYTES}"),
        ("d/" + "k" * 256, f"of 256 bytes of UTF-8, more than the {MAX_SEGMENT_BYTES}"),
    ],
)
def test_input_keys_stay_in_the_clients_storage(key: str, words: str) -> None:
    ((field, message),) = refusal(spec_with(inputs=[{"key": key}])).errors
    assert field == "inputs.0.key"
    assert words in message


def test_input_name_must_be_relative() -> None:
    err = refusal(spec_with(inputs=[{"key": "data.csv", "name": "../data.csv"}]))
    assert fields_of(err) == ["inputs.0.name"]


def test_input_digest_must_say_its_algorithm_and_be_hex() -> None:
    for bad in ("XYZ", "ab" * 32, "md5:" + "ab" * 16, "blake3:" + "AB" * 32, "blake3:ab"):
        err = refusal(spec_with(inputs=[{"key": "a", "digest": bad}]))
        assert fields_of(err) == ["inputs.0.digest"], bad
    err = refusal(spec_with(inputs=[{"key": "a", "sha256": "XYZ"}]))
    assert fields_of(err) == ["inputs.0.sha256"]


def test_an_input_pinned_by_a_bare_sha256_reads_as_a_sha256_digest() -> None:
    """As specs (and JobSubmitted events) before BLAKE3 pinned an input."""
    spec = parse_job_spec(spec_with(inputs=[{"key": "a", "sha256": "ab" * 32}]))
    assert spec.inputs[0].digest == "sha256:" + "ab" * 32
    assert spec.model_dump(mode="json")["inputs"][0] == {
        "key": "a", "name": None, "digest": "sha256:" + "ab" * 32, "size": None}
    both = refusal(spec_with(inputs=[{"key": "a", "sha256": "ab" * 32,
                                      "digest": "blake3:" + "ab" * 32}]))
    assert fields_of(both) == ["inputs.0"]


def test_two_inputs_landing_on_one_name_are_refused() -> None:
    err = refusal(spec_with(inputs=[{"key": "a/data.csv"}, {"key": "b/data.csv"}]))
    assert len(err.errors) == 1
    assert "inputs" in str(err)
    assert "two inputs would land on the same name" in str(err)


@pytest.mark.parametrize("name", ["1BAD", "BAD-NAME", "A B", "", "Ä"])
def test_env_names_must_be_shell_names(name: str) -> None:
    err = refusal(spec_with(env={"GOOD": "1", name: "x"}))
    assert err.errors == [("env", f"{name!r} is not a valid environment variable name")]


@pytest.mark.parametrize("name", ["CUDA_VISIBLE_DEVICES", "PATH", "HOME"])
def test_env_set_by_the_provider_is_refused(name: str) -> None:
    err = refusal(spec_with(env={name: "0"}))
    assert err.errors == [("env", f"{name} is set by the provider and cannot be overridden")]


@pytest.mark.parametrize("command", ["", "   ", []])
def test_empty_command(command: Any) -> None:
    err = refusal(spec_with(command=command))
    assert err.errors == [("command", "must not be empty")]


@pytest.mark.parametrize("name", ["", "-lead", "a" * 64, "has space", "x/y"])
def test_job_name(name: str) -> None:
    err = refusal(spec_with(name=name))
    assert fields_of(err) == ["name"]


@pytest.mark.parametrize("data", [None, [], ["name", "x"], "name: x", 42])
@pytest.mark.parametrize("parse", [parse_job_spec, parse_job_spec_file])
def test_spec_must_be_a_mapping(data: Any, parse: Any) -> None:
    err = refusal(data, parse)
    assert err.errors == [("spec", "must be a mapping of fields")]
    assert str(err) == "spec: must be a mapping of fields"


def test_spec_error_is_a_value_error_listing_each_field() -> None:
    err = refusal(spec_with(resources={"gpus": 0}, outputs=["/abs"]))
    assert isinstance(err, ValueError)
    for field, message in err.errors:
        assert f"{field}: {message}" in str(err)


# Spec files: inputs may be local files or stored keys, never both or neither


def test_spec_file_input_by_path_or_by_key() -> None:
    spec = parse_job_spec_file(spec_with(inputs=[{"path": "./train.csv"}, {"key": "data/x"}]))
    assert spec.inputs[0].path == "./train.csv"
    assert spec.inputs[0].key is None
    assert spec.inputs[1].key == "data/x"


@pytest.mark.parametrize("item", [{}, {"name": "x"}, {"path": "a.csv", "key": "data/a.csv"}])
def test_spec_file_input_needs_exactly_one_source(item: dict[str, str]) -> None:
    err = refusal(spec_with(inputs=[item]), parse_job_spec_file)
    assert err.errors == [
        ("inputs.0", "give exactly one of 'path' (a local file) or 'key' (in storage)")
    ]


def test_spec_file_input_key_is_checked() -> None:
    err = refusal(spec_with(inputs=[{"key": "../x"}]), parse_job_spec_file)
    assert fields_of(err) == ["inputs.0"]
    assert "is not a plain key" in str(err)


def test_api_spec_does_not_take_local_paths() -> None:
    err = refusal(spec_with(inputs=[{"path": "a.csv"}]))
    assert ("inputs.0.path", "is not a known field") in err.errors


# Bugs found (see the reasons)


def test_env_name_with_trailing_newline_is_refused() -> None:
    err = refusal(spec_with(env={"BAD\n": "x"}))
    assert fields_of(err) == ["env"]


@pytest.mark.parametrize("key", ["a/./b", "./x"])
def test_input_key_with_a_dot_part_is_refused(key: str) -> None:
    err = refusal(spec_with(inputs=[{"key": key}]))
    assert fields_of(err) == ["inputs.0.key"]


def test_job_name_with_trailing_newline_is_refused() -> None:
    err = refusal(spec_with(name="train\n"))
    assert fields_of(err) == ["name"]


def test_boolean_price_is_refused() -> None:
    err = refusal(spec_with(max_price_per_gpu_hour=True))
    assert fields_of(err) == ["max_price_per_gpu_hour"]


def test_boolean_timeout_is_refused() -> None:
    err = refusal(spec_with(timeout=True))
    assert fields_of(err) == ["timeout"]


def test_accepted_spec_cost_fits_in_a_bigint() -> None:
    try:
        spec = parse_job_spec(
            spec_with(resources={"gpus": 64}, timeout="7d", max_price_per_gpu_hour="1000000000")
        )
    except SpecError as err:
        assert fields_of(err) == ["max_price_per_gpu_hour"]
    else:
        assert spec.max_cost_micro < 2**63


@pytest.mark.parametrize(("field", "value"), [
    ("priority", True), ("priority", "3"), ("priority", 3.0),
    ("resources.gpus", True), ("resources.min_gpu_memory_gb", "8"),
    ("resources.min_reputation", True), ("resources.min_reputation", "0.5"),
    ("resources.min_reputation", math.nan), ("verification.replicas", False),
    ("verification.comparator.abs_tol", math.inf),
])
def test_numbers_are_strict(field: str, value: Any) -> None:
    """`priority: true` was read as priority 1, `min_reputation: "0.5"` as 0.5."""
    data: dict[str, Any] = spec_with()
    *parents, leaf = field.split(".")
    inner = data
    for part in parents:
        inner = inner.setdefault(part, {})
    inner[leaf] = value
    assert fields_of(refusal(data)) == [field]


def test_an_int_is_still_a_float() -> None:
    spec = parse_job_spec(spec_with(resources={"min_reputation": 1}, priority=2))
    assert (spec.resources.min_reputation, spec.priority) == (1.0, 2)


@pytest.mark.parametrize(("fields", "field"), [
    ({"env": {"A": "\ud800"}}, "env.A"),
    ({"command": ["echo", "a\udfffb"]}, "command.1"),
    ({"command": "echo \udfff"}, "command.2"),
    ({"outputs": ["\udc80.txt"]}, "outputs.0"),
    ({"inputs": [{"key": "\ud800"}]}, "inputs.0.key"),
    ({"inputs": [{"key": "k", "name": "\ud800"}]}, "inputs.0.name"),
    ({"resources": {"gpu_model": "H\ud800"}}, "resources.gpu_model"),
    ({"verification": {"verifier": ["\ud800"]}}, "verification.verifier.0"),
])
def test_a_lone_surrogate_is_refused_by_field(fields: dict[str, Any], field: str) -> None:
    """JSON may carry "\\ud800": the spec took it, and recording it failed in the event
    store with "'utf-8' codec can't encode character", which names no field."""
    ((got, message),) = refusal(spec_with(**fields)).errors
    assert got == field
    assert "lone surrogate" in message


@pytest.mark.parametrize(("fields", "field", "at"), [
    ({"env": {"A": "a\x00b"}}, "env.A", 1),
    ({"command": ["echo", "ab\x00"]}, "command.1", 2),
    ({"resources": {"region": "\x00eu"}}, "resources.region", 0),
])
def test_a_nul_character_is_refused_by_field(fields: dict[str, Any], field: str, at: int) -> None:
    """No process can be handed an argument or a variable with NUL in it."""
    assert refusal(spec_with(**fields)).errors == [
        (field, f"must not contain a NUL character (one is at character {at})")]


def test_a_command_is_at_most_64_kib_as_execve_counts_it() -> None:
    fits = ["x" * (MAX_COMMAND_BYTES - 3), "a"]  # "x...\0a\0"
    assert parse_job_spec(spec_with(command=fits)).command == fits
    err = refusal(spec_with(command=[*fits[:-1], "ab"]))
    assert err.errors == [("command", f"is {MAX_COMMAND_BYTES + 1} bytes (UTF-8, a NUL after "
                                      "each argument), more than the 64 KiB allowed")]
    err = refusal(spec_with(command="é" * MAX_COMMAND_BYTES))  # 2 bytes each
    assert fields_of(err) == ["command"]
    assert "more than the 64 KiB allowed" in err.errors[0][1]
    err = refusal(spec_with(verification={"verifier": "x" * MAX_COMMAND_BYTES}))
    assert fields_of(err) == ["verification.verifier"]


def test_env_is_bounded_per_value_in_count_and_in_all() -> None:
    value = "x" * MAX_ENV_VALUE_BYTES
    assert parse_job_spec(spec_with(env={"A": value})).env == {"A": value}
    assert refusal(spec_with(env={"A": value + "x"})).errors == [
        ("env.A", f"is {MAX_ENV_VALUE_BYTES + 1} bytes of UTF-8, more than the 32 KiB allowed")]
    many = {f"V{n}": "1" for n in range(MAX_ENV_VARS + 1)}
    assert refusal(spec_with(env=many)).errors == [
        ("env", f"has {MAX_ENV_VARS + 1} variables, more than the {MAX_ENV_VARS} allowed")]
    big = {f"V{n}": value for n in range(MAX_ENV_BYTES // MAX_ENV_VALUE_BYTES)}
    ((field, message),) = refusal(spec_with(env=big)).errors
    assert field == "env" and "more than the 256 KiB allowed" in message


def test_inputs_outputs_and_paths_are_bounded() -> None:
    outputs = [f"o{n}" for n in range(MAX_FILES + 1)]
    assert refusal(spec_with(outputs=outputs)).errors == [
        ("outputs", f"List should have at most {MAX_FILES} items after validation, "
                    f"not {MAX_FILES + 1}")]
    inputs = [{"key": f"k{n}"} for n in range(MAX_FILES + 1)]
    assert fields_of(refusal(spec_with(inputs=inputs))) == ["inputs"]
    long = "d/" * (MAX_PATH_BYTES // 2 + 1) + "x"
    ((field, message),) = refusal(spec_with(outputs=[long])).errors
    assert field == "outputs.0"
    assert message.endswith(f"is {len(long)} bytes of UTF-8, more than the {MAX_PATH_BYTES} a "
                            "path may have (an output's storage key, jobs/<job>/runs/<attempt>/"
                            f"<path>, is at most {MAX_KEY_BYTES})")
    assert fields_of(refusal(spec_with(inputs=[{"key": "k", "name": long}]))) == [
        "inputs.0.name"]
    model = "H" * (MAX_LABEL_CHARS + 1)
    assert refusal(spec_with(resources={"gpu_model": model})).errors == [
        ("resources.gpu_model",
         f"is {MAX_LABEL_CHARS + 1} characters, more than the {MAX_LABEL_CHARS} allowed")]


def test_a_long_bad_value_is_shown_cut_short() -> None:
    ((_, message),) = refusal(spec_with(queue="Q" * 1_000_000)).errors
    assert len(message) < 200 and "(1000000 characters)" in message


@pytest.mark.parametrize("value", ["strict", "FULL", True, 1, None])
def test_isolation_is_any_or_full(value: Any) -> None:
    assert fields_of(refusal(spec_with(resources={"isolation": value}))) == ["resources.isolation"]
    assert parse_job_spec(spec_with()).resources.isolation == "any"
    assert parse_job_spec(spec_with(resources={"isolation": "full"})).resources.isolation == "full"


# Paths that become storage keys (the red team's "a long output path gives every run free")


def test_every_output_a_spec_admits_has_a_key_storage_takes() -> None:
    """The longest output path, each part as long as a file system allows, in 4-byte
    characters: its key for any job and any attempt up to 10 digits is a key storage takes."""
    from domain.outputs import output_key
    from protocol.fields import check_storage_key

    part = "\U0001d552" * (MAX_SEGMENT_BYTES // 4)  # 252 bytes
    parts, size = [], -1
    while size + 1 + len(part.encode()) <= MAX_PATH_BYTES:
        parts.append(part)
        size += 1 + len(part.encode())
    path = "/".join(parts) + "/" + "x" * (MAX_PATH_BYTES - size - 1)
    assert len(path.encode()) == MAX_PATH_BYTES
    spec = parse_job_spec(spec_with(outputs=[path]))
    key = output_key("0f8fad5b-d9cb-469f-a165-70867728950e", spec.outputs[0], 2**31 - 1)
    assert check_storage_key(key) == key
    assert len(f"{'c' * 64}/{key}".encode()) <= 1024  # S3's bound on the object's name


@pytest.mark.parametrize(
    "path",
    [
        "out/" + "/".join(["\U0001d552" * 63] * 15) + "/" + "\U0001d552" * 50,  # the red team's
        "o" * 1000,
        "o" * (MAX_PATH_BYTES + 1),
        "\u00e9" * (MAX_PATH_BYTES // 2 + 1),
        "out/" + "a" * (MAX_SEGMENT_BYTES + 1),
        "\U0001d552" * 64,  # 256 bytes in one part
    ],
)
def test_an_output_whose_key_storage_would_refuse_is_refused_at_submission(path: str) -> None:
    ((field, message),) = refusal(spec_with(outputs=["ok.txt", path])).errors
    assert field == "outputs.1"
    assert f"more than the {MAX_PATH_BYTES} a path may have" in message or (
        f"more than the {MAX_SEGMENT_BYTES} a file or folder name may have" in message)
    assert len(message) < 400  # the path is shown cut short
    ((field, _),) = refusal(spec_with(inputs=[{"key": "k", "name": path}])).errors
    assert field == "inputs.0.name"
    ((field, _),) = refusal(spec_with(outputs=[path]), parse_job_spec_file).errors
    assert field == "outputs.0"


def test_a_recorded_spec_reads_past_bounds_added_since() -> None:
    """A job admitted before a bound (a longer output path, a key, a price as "1e3") still
    reads as the network recorded it: only what is submitted is held to the new bounds."""
    data = spec_with(outputs=["o" * 1000], inputs=[{"key": "k" * 1000, "name": "n" * 1000}],
                     max_price_per_gpu_hour="1e1")
    assert sorted(fields_of(refusal(data))) == ["inputs.0.key", "inputs.0.name",
                                                "max_price_per_gpu_hour", "outputs.0"]
    spec = JobSpec.recorded(data)
    assert (spec.outputs, spec.max_price_micro) == (["o" * 1000], 10_000_000)
    with pytest.raises(ValueError, match="leaves the job's directory"):  # the rest still holds
        JobSpec.recorded(spec_with(outputs=["../x"]))


@pytest.mark.parametrize("price", ["1_000", "\u0663", " 2.5 ", "2.5\n", "+2.5", ".5", "1e2"])
def test_a_price_is_plain_digits(price: str) -> None:
    ((field, message),) = refusal(spec_with(max_price_per_gpu_hour=price)).errors
    assert field == "max_price_per_gpu_hour"
    assert message.startswith(f"{price!r} is not a number of credits: write digits")


@pytest.mark.parametrize(("price", "kept"), [(1e-05, "0.00001"), (100.0, "100"), (2.5, "2.5"),
                                             ("2.50", "2.50"), (3, "3")])
def test_a_price_given_as_a_number_is_kept_in_its_plain_form(price: Any, kept: str) -> None:
    spec = parse_job_spec(spec_with(max_price_per_gpu_hour=price))
    assert spec.max_price_per_gpu_hour == kept
    assert parse_job_spec(spec.model_dump(mode="json")) == spec
