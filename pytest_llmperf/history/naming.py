"""Summary keys in words and units, as the change lines and the trend report print them."""

from __future__ import annotations

import re

_LATENCY_NAMES = {
    "ttft": "TTFT",
    "tpot": "TPOT",
    "itl": "ITL",
    "itl_token": "ITL per token",
    "e2el": "E2E latency",
    "e2e": "E2E latency",
    "e2e_latency": "E2E latency",
    "client_queue": "client queue time",
}
_STAT = re.compile(r"(mean|median|std|min|max|p\d+(?:\.\d+)?)_(.+)")


def metric_unit(metric: str) -> str:
    """The unit of a summary key: ``ms`` for ``*_ms``, ``tok/s`` or ``req/s`` for throughputs (``/GPU`` per GPU),
    ``tok/s/user`` for interactivity, ``fraction`` for rates, else ""."""
    if metric.endswith("_ms"):
        return "ms"
    if "throughput" in metric or "goodput" in metric:
        unit = "req/s" if metric.startswith("request_") else "tok/s"
        return unit + "/GPU" if metric.endswith("_per_gpu") else unit
    if metric == "interactivity":
        return "tok/s/user"
    if metric.endswith(("_rate", "_fraction", "_attainment")):
        return "fraction"
    return ""


def metric_label(metric: str, *, unit: bool = True) -> str:
    """A summary key in words: ``median_tpot_ms`` → "median TPOT (ms)", ``output_throughput_per_gpu`` →
    "output throughput per GPU (tok/s/GPU)"; ``unit=False`` leaves the unit out."""
    stem = metric.removesuffix("_ms").removesuffix("_per_gpu")
    match = _STAT.fullmatch(stem) if metric.endswith("_ms") else None
    if match:
        words = f"{match.group(1)} {_LATENCY_NAMES.get(match.group(2), match.group(2).replace('_', ' '))}"
    else:
        words = stem.replace("_", " ") + (" per GPU" if metric.endswith("_per_gpu") else "")
    shown = metric_unit(metric)
    return f"{words} ({shown})" if unit and shown else words
