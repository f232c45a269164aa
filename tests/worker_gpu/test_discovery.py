from __future__ import annotations

import pytest

from worker_gpu.discovery import (
    NvmlUnavailable,
    discover_nvml,
    parse_simulated,
    read_telemetry_nvml,
    simulated_telemetry,
)


def test_parse_simulated_counts_models_and_memory() -> None:
    gpus = parse_simulated("1xA100:40, 2xRTX4090:24", namespace="p1")

    assert [(g.index, g.model, g.memory_mb) for g in gpus] == [
        (0, "A100", 40 * 1024),
        (1, "RTX4090", 24 * 1024),
        (2, "RTX4090", 24 * 1024),
    ]
    assert len({g.uuid for g in gpus}) == 3
    assert all(g.uuid.startswith("SIM-") for g in gpus)


def test_simulated_uuids_are_stable_per_provider_and_differ_between_providers() -> None:
    assert parse_simulated("2xH100:80", "p1") == parse_simulated("2xH100:80", "p1")
    assert parse_simulated("2xH100:80", "p1")[0].uuid != parse_simulated("2xH100:80", "p2")[0].uuid


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("2xH100", "'2xH100'"),
        ("1xA100:40,twoxH100:80", "'twoxH100:80'"),
        ("0xH100:80", "count must be at least 1"),
        ("1xH100:0", "memory must be at least 1 GB"),
        ("1xA100:40,", "''"),
        ("", "no GPUs declared"),
        ("65xH100:80", "at most 64"),
    ],
)
def test_parse_simulated_names_the_bad_part(spec: str, named: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_simulated(spec)

    assert named in str(caught.value)


def test_simulated_telemetry_is_busy_only_while_a_job_holds_the_gpu() -> None:
    gpus = parse_simulated("3xL4:24")

    readings = simulated_telemetry(gpus, busy={1})

    assert [r.utilization_pct for r in readings] == [0, 100, 0]
    assert all(r.temperature_c is None and r.power_w is None for r in readings)
    assert all(r.ecc_errors is None and r.xid_errors is None for r in readings)


def _has_driver() -> bool:
    try:
        discover_nvml()
    except NvmlUnavailable:
        return False
    return True


@pytest.mark.skipif(_has_driver(), reason="this machine has an NVIDIA driver")
def test_discover_nvml_without_a_driver_says_why() -> None:
    with pytest.raises(NvmlUnavailable) as caught:
        discover_nvml()

    message = str(caught.value)
    assert message.startswith("NVML: ")
    assert "\n" not in message
    assert "Not Found" in message or "Not Loaded" in message
    with pytest.raises(NvmlUnavailable):
        read_telemetry_nvml()


@pytest.mark.skipif(not _has_driver(), reason="needs an NVIDIA driver")
def test_discover_nvml_on_a_gpu_machine() -> None:
    gpus = discover_nvml()
    readings = read_telemetry_nvml()

    assert [g.index for g in gpus] == list(range(len(gpus)))
    assert all(g.memory_mb > 1024 and g.uuid.startswith("GPU-") for g in gpus)
    assert all(g.driver_version for g in gpus)
    assert [r.index for r in readings] == [g.index for g in gpus]
