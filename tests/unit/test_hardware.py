"""GPU detection into baseline hardware ids, with fake nvidia-smi / rocm-smi programs on PATH."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pytest_llmperf.hardware import detect, gpu_model_id, hardware_id


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA H200", "h200"),
        ("NVIDIA GB200", "gb200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("AMD Instinct MI300X", "mi300x"),
        ("NVIDIA GeForce RTX 4090", "4090"),
    ],
)
def test_gpu_model_id(name: str, expected: str) -> None:
    assert gpu_model_id(name) == expected


def test_hardware_id_counts_gpus() -> None:
    assert hardware_id(["NVIDIA H200"] * 8) == "h200x8"
    assert hardware_id([]) == "cpu"
    assert hardware_id(["NVIDIA H100", "NVIDIA A100"]) == "a100x1-h100x1"


def fake_tool(directory: Path, name: str, output: str) -> None:
    path = directory / name
    # printf is a shell builtin: the script works with PATH holding only tmp_path.
    lines = "".join(f"printf '%s\\n' '{line}'\n" for line in output.splitlines())
    path.write_text("#!/bin/sh\n" + lines)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_detects_nvidia(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tool(tmp_path, "nvidia-smi", "NVIDIA GB200\n" * 4)
    monkeypatch.setenv("PATH", str(tmp_path))
    hw = detect()
    assert (hw.id, hw.gpu_count, hw.source) == ("gb200x4", 4, "nvidia-smi")


def test_detects_rocm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tool(
        tmp_path,
        "rocm-smi",
        "device,Card series,Card model\ncard0,AMD Instinct MI300X,0x74a1\ncard1,AMD Instinct MI300X,0x74a1\n",
    )
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect().id == "mi300xx2"


def test_no_gpu_tool_means_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    hw = detect()
    assert (hw.id, hw.gpu_count) == ("cpu", 0)


def test_failing_tool_means_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "nvidia-smi"
    path.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}")
    assert detect().id == "cpu"
