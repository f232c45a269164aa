from __future__ import annotations

from pathlib import Path

import pytest

from worker_gpu.discovery import GpuTelemetry, parse_simulated
from worker_gpu.runtime_process import ProcessRuntime
from worker_gpu.selfcheck import CUDA_PROBE, print_table


def test_table_shows_unknown_readings_as_dashes(capsys: pytest.CaptureFixture[str]) -> None:
    gpus = parse_simulated("2xH100:80")

    print_table(gpus, [GpuTelemetry(0, utilization_pct=37, power_w=312.5)])

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "idx", "model", "MiB", "driver", "CUDA", "util%", "temp", "C", "power", "W", "ECC", "XID"
    ]  # fmt: skip
    assert lines[1].split() == ["0", "H100", "81920", "37", "-", "312.5", "-", "-"]
    assert lines[2].split() == ["1", "H100", "81920", "-", "-", "-", "-", "-"]


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="this machine has an NVIDIA driver")
def test_cuda_probe_says_when_there_is_no_driver(tmp_path: Path) -> None:
    outcome = ProcessRuntime().run(["python3", "-c", CUDA_PROBE], tmp_path, [0], 60, {})

    assert outcome.exit_code == 3
    assert "libcuda.so.1 not loadable" in outcome.log_tail
