from __future__ import annotations

from pathlib import Path

import pytest

from client.errors import SpecRejectedError
from client.specfile import plan_spec_file

HELLO = Path(__file__).parents[2] / "examples" / "hello" / "job.yaml"


def write(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> Path:
    for name, content in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    return spec


def test_hello_example_resolves_to_api_spec_and_upload_plan() -> None:
    plan = plan_spec_file(HELLO)

    assert plan.name == "hello"
    assert [(u.field, u.local.name, u.key) for u in plan.uploads] == [
        ("inputs.0.path", "hello.py", "inputs/hello/hello.py"),
        ("inputs.1.path", "input.txt", "inputs/hello/input.txt"),
    ]
    assert all(u.local.is_file() for u in plan.uploads)
    assert plan.spec["inputs"] == [
        {"key": "inputs/hello/hello.py", "name": "hello.py"},
        {"key": "inputs/hello/input.txt", "name": "input.txt"},
    ]
    assert plan.spec["command"] == ["python3", "hello.py"]
    assert plan.spec["outputs"] == ["out/result.txt"]
    assert plan.spec["resources"]["gpus"] == 1
    assert plan.spec["max_price_per_gpu_hour"] == "2.5"
    assert plan.spec["timeout"] == 300


def test_local_paths_are_relative_to_the_spec_folder_and_named_inputs_keep_their_name(
    tmp_path: Path,
) -> None:
    spec = write(
        tmp_path,
        """
name: train
command: python3 train.py
max_price_per_gpu_hour: 1
inputs:
  - path: data/set.csv
    name: data/train.csv
  - key: datasets/big.bin
  - key: datasets/other.bin
    name: extra.bin
""",
        {"data/set.csv": "a,b\n"},
    )

    plan = plan_spec_file(spec)

    assert [(u.local, u.key) for u in plan.uploads] == [
        (tmp_path / "data/set.csv", "inputs/train/data/train.csv")
    ]
    assert plan.spec["inputs"] == [
        {"key": "inputs/train/data/train.csv", "name": "data/train.csv"},
        {"key": "datasets/big.bin"},
        {"key": "datasets/other.bin", "name": "extra.bin"},
    ]
    assert plan.spec["command"] == ["/bin/sh", "-c", "python3 train.py"]


def test_bad_field_is_named_with_the_file(tmp_path: Path) -> None:
    spec = write(
        tmp_path, "name: x\ncommand: [a]\nmax_price_per_gpu_hour: 1\nresources: {gpus: 0}\n"
    )

    with pytest.raises(SpecRejectedError) as caught:
        plan_spec_file(spec)

    assert caught.value.errors == [("resources.gpus", "Input should be greater than or equal to 1")]
    assert str(caught.value) == (
        f"{spec}: resources.gpus: Input should be greater than or equal to 1"
    )


def test_missing_local_input_names_its_field_and_nothing_is_planned(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        "name: x\ncommand: [a]\nmax_price_per_gpu_hour: 1\n"
        "inputs: [{path: here.txt}, {path: gone.txt}]\n",
        {"here.txt": "hi"},
    )

    with pytest.raises(SpecRejectedError) as caught:
        plan_spec_file(spec)

    [(field, message)] = caught.value.errors
    assert field == "inputs.1.path"
    assert "gone.txt: no such file" in message


def test_two_inputs_landing_on_one_name_are_refused_before_upload(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        "name: x\ncommand: [a]\nmax_price_per_gpu_hour: 1\n"
        "inputs: [{path: a/f.txt}, {path: b/f.txt}]\n",
        {"a/f.txt": "1", "b/f.txt": "2"},
    )

    with pytest.raises(SpecRejectedError) as caught:
        plan_spec_file(spec)

    assert "two inputs would land on the same name" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("name: [unclosed\n", "spec", "is not valid YAML at line"),
        ("name: " + "[" * 5000 + "]" * 5000 + "\n", "spec", "is nested too deeply"),
        ("- just\n- a list\n", "spec", "must be a mapping"),
        ("name: x\ncommand: [a]\n", "max_price_per_gpu_hour", "is required"),
        ("name: x\ncommand: [a]\nmax_price_per_gpu_hour: 1\ncolour: red\n", "colour", "known"),
    ],
)
def test_unreadable_specs_name_what_is_wrong(
    tmp_path: Path, text: str, field: str, words: str
) -> None:
    with pytest.raises(SpecRejectedError) as caught:
        plan_spec_file(write(tmp_path, text))

    assert caught.value.errors[0][0] == field
    assert words in caught.value.errors[0][1]


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecRejectedError, match=r"nope\.yaml: spec: no such file"):
        plan_spec_file(tmp_path / "nope.yaml")
