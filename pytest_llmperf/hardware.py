"""Hardware identity for the baseline pair: ``h200x8``, ``mi300xx8``, or ``cpu`` when no GPU is visible.

Read from ``nvidia-smi`` or ``rocm-smi`` when they are on PATH; ``--llmperf-hardware`` overrides it. The id is
a directory name under ``baselines/``, so it is lower-case and made of letters, digits, ``x`` and ``-``.
"""

from __future__ import annotations

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
    return "-".join(f"{model}x{count}" for model, count in sorted(counts.items()))


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


def detect() -> Hardware:
    """The GPUs this machine shows, as a baseline hardware id."""
    for source, probe in (("nvidia-smi", _nvidia), ("rocm-smi", _rocm)):
        names = probe()
        if names:
            return Hardware(id=hardware_id(names), gpu_count=len(names), gpu_names=tuple(names), source=source)
    return Hardware(id="cpu", gpu_count=0, source="none")
