"""Hardware identity for the baseline pair: ``h200x8``, ``mi300xx8``, ``a100x4+h100x4``, or for a CPU engine
the CPU model and the cores the server gets, ``cpu_xeonplatinum8375cx1``.

Read from ``nvidia-smi`` or ``rocm-smi`` when they are on PATH, else from ``/proc/cpuinfo``;
``--llmperf-hardware`` overrides it. The id is a directory name under ``baselines/``, so it is lower-case and
made of letters, digits, ``x``, ``_`` and ``+`` (``-`` joins hardware and precision in the pair).

A CPU is hardware too: a committed baseline of a CPU engine compares only with the same CPU model serving from
the same number of cores (on one machine tried, every point of the embedded engine ran 1.3–1.5× faster than a
baseline recorded on another machine and passed only because of a 50 % tolerance).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass

_TIMEOUT_S = 10.0
# Vendor and form-factor words that do not tell two GPU models apart.
_NOISE = re.compile(
    r"\b(nvidia|amd|instinct|tesla|geforce|rtx|radeon|graphics|pcie|sxm\d*|nvl|hbm\w*|\d+\s*gb)\b", re.IGNORECASE
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Hardware:
    id: str
    gpu_count: int
    gpu_names: tuple[str, ...] = ()
    source: str = "none"


def gpu_model_id(name: str) -> str:
    """A short model id from a marketing name: "NVIDIA H200" → "h200", "NVIDIA A100-SXM4-80GB" → "a100"."""
    words = _NOISE.sub(" ", name.replace("-", " ").replace("_", " "))
    slug = "".join(word.lower() for word in words.split())
    return re.sub(r"[^a-z0-9]", "", slug) or "gpu"


def hardware_id(names: list[str]) -> str:
    if not names:
        return "cpu"
    counts = Counter(gpu_model_id(n) for n in names)
    return "+".join(f"{model}x{count}" for model, count in sorted(counts.items()))


# Words of CPU model names that do not tell two models apart.
_CPU_NOISE = re.compile(
    r"(\(r\)|\(tm\)|\bcpu\b|\bprocessor\b|\bintel\b|\bamd\b|\bwith\b.*$|@.*$|\b\d+-core\b|\bcore\(s\)\b)",
    re.IGNORECASE,
)


def cpu_model_id(name: str, family: str | None = None, model: str | None = None) -> str:
    """A short id of a CPU model: "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz" → "xeonplatinum8375c". A name
    without a model number (virtual machines often show just "AMD EPYC") gets the family and model numbers
    from cpuinfo, so two generations are not taken for one."""
    slug = re.sub(r"[^a-z0-9]", "", _CPU_NOISE.sub(" ", name).lower()) or "unknown"
    if not re.search(r"\d", slug) and family and model:
        slug += f"f{family}m{model}"
    return slug


def cpu_info() -> tuple[str, str | None, str | None]:
    """(model name, family, model number) of this machine's CPU, as well as the platform tells."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, sep, value = line.partition(":")
                if not sep:
                    if fields:
                        break  # the first processor's block is enough
                    continue
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or fields.get("Model") or platform.processor() or platform.machine() or "unknown"
    return name, fields.get("cpu family"), fields.get("model")


def cpu_hardware_id(cores: int) -> str:
    """``cpu_<model>x<cores>``: the CPU model and the number of cores the server gets."""
    name, family, model = cpu_info()
    return f"cpu_{cpu_model_id(name, family, model)}x{max(1, cores)}"


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _nvidia() -> list[str] | None:
    out = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    if out is None:
        return None
    return [line.strip() for line in out.splitlines() if line.strip()]


def _rocm() -> list[str] | None:
    out = _run(["rocm-smi", "--showproductname", "--csv"])
    if out is None:
        return None
    names = []
    for line in out.splitlines()[1:]:
        fields = [f.strip() for f in line.split(",")]
        # device,Card series,Card model,...: the series names the product ("AMD Instinct MI300X").
        if len(fields) > 1 and fields[0].startswith("card"):
            names.append(fields[1])
    return names


def detect(server_cores: int | None = None) -> Hardware:
    """The GPUs this machine shows, as a baseline hardware id; without any, the CPU model and ``server_cores``
    (the cores a CPU engine gets; default: every core this process may use)."""
    for source, probe in (("nvidia-smi", _nvidia), ("rocm-smi", _rocm)):
        names = probe()
        if names:
            return Hardware(id=hardware_id(names), gpu_count=len(names), gpu_names=tuple(names), source=source)
    cores = server_cores if server_cores else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return Hardware(id=cpu_hardware_id(cores), gpu_count=0, source="cpuinfo")
