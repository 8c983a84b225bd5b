"""GPU detection into baseline hardware ids, with fake nvidia-smi / rocm-smi programs on PATH."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pytest_llmperf.servers.hardware import cpu_model_id, detect, gpu_model_id, hardware_id


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
    # "+" joins models: "-" separates hardware and precision in the pair's directory name.
    assert hardware_id(["NVIDIA H100", "NVIDIA A100"]) == "a100x1+h100x1"


@pytest.mark.parametrize(
    ("name", "family", "model", "expected"),
    [
        ("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "6", "106", "xeonplatinum8375c"),
        ("AMD EPYC 7B13 64-Core Processor", "25", "1", "epyc7b13"),
        ("AMD Ryzen 9 7950X 16-Core Processor", "25", "97", "ryzen97950x"),
        ("AMD EPYC", "25", "17", "epycf25m17"),  # a VM's generic name: family and model tell generations apart
        ("Apple M2 Pro", None, None, "applem2pro"),
    ],
)
def test_cpu_model_id(name: str, family: str | None, model: str | None, expected: str) -> None:
    assert cpu_model_id(name, family, model) == expected


def test_a_cpu_engine_is_named_by_its_cpu_and_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_llmperf.judge.baseline import BaselineStore

    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi, no rocm-smi
    one, two = detect(server_cores=1), detect(server_cores=2)
    assert one.id.startswith("cpu_")
    assert one.id.endswith("x1")
    assert two.id.endswith("x2")
    assert one.source == "cpuinfo"
    BaselineStore(tmp_path).path_for(one.id, "default", "tests/test_x.py")  # a valid directory name


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
    assert hw.id.startswith("cpu_")
    assert hw.gpu_count == 0


def test_failing_tool_means_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "nvidia-smi"
    path.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}")
    assert detect().id.startswith("cpu_")
