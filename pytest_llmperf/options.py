"""Command-line options and ini keys, resolved once into :class:`Settings`.

Every ``--llmperf-<name>`` option has an ini key ``llmperf_<name>``; the command line wins. Bad values raise
``pytest.UsageError`` naming the option, the value and what is accepted, before any load is spent.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_llmperf.spec import AB_ORDERS, COMPAT_MODES

API_KEY_ENV = "LLMPERF_API_KEY"


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    endpoint: str | None
    server: str | None
    model: str | None
    compat: str
    api_key: str | None
    tokenizer: str | None
    ready_timeout_s: float
    hardware: str | None
    precision: str | None
    json_path: Path | None
    report_path: Path | None
    gpus: int | None
    profiles_path: Path | None
    baselines: Path
    update: str | None  # None, "yes" or "force"
    inconclusive: str
    tolerance: float | None
    repeats: int | None
    scale: float | None  # None: auto
    progress: str
    compare: str | None  # A/B mode: B's URL or profile name
    compare_api_key: str | None  # B's key: its own variable when named, else A's
    compare_order: str
    compare_pause_s: float
    busy_poll: bool

    def __repr__(self) -> str:  # never show the key
        return f"Settings(endpoint={self.endpoint!r}, server={self.server!r}, model={self.model!r}, ...)"


_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("endpoint", "URL", "Attach to a running OpenAI-compatible server at URL, e.g. http://127.0.0.1:8000"),
    ("server", "PROFILE", "Spawn a server from a profile (llamacpp-tiny, sim, or one of your own)"),
    ("model", "NAME", "Model name to request. Default: the first of the server's /v1/models"),
    ("compat", "MODE", "Metric semantics: vllm (default) or sglang"),
    ("tokenizer", "PATH", "Local tokenizer.json for exact prompt lengths. Default: the server's /tokenize"),
    ("ready-timeout", "SECONDS", "How long to wait for an attached server to answer. Default: 30"),
    ("hardware", "ID", "Hardware id of the baseline pair, e.g. h200x8. Default: detected"),
    ("precision", "ID", "Precision id of the baseline pair, e.g. fp8"),
    ("json", "PATH", "Write the session's results as JSON to PATH"),
    ("report", "PATH", "Write a self-contained HTML report with plots to PATH"),
    ("gpus", "N", "GPUs behind the endpoint, for per-GPU throughput. Default: the profile's, else unknown"),
    ("profiles", "PATH", "YAML file of your own server profiles (see the README)"),
    ("baselines", "DIR", "Baseline root. Default: baselines/ under the rootdir"),
    ("inconclusive", "fail|warn|skip", "What an inconclusive verdict does to its test. Default: warn"),
    ("tolerance", "FRACTION", "Tolerance of every gating metric, e.g. 0.05 for five percent. Default: per metric"),
    ("repeats", "N", "Most runs per perf test while its verdict is open. Default: 5"),
    ("progress", "auto|on|off", "Live progress of each run. Default: auto, on a terminal only"),
    (
        "busy-poll",
        "on|off",
        "Keep the load generator's event loop polling during a run instead of sleeping: events are stamped "
        "without the CPU's wake-up delay (up to 1 ms on some virtual machines), for a full core. Default: off",
    ),
    (
        "compare",
        "URL|PROFILE",
        "A/B mode: run every perf test interleaved on the server under test (A) and this one (B) and judge B vs A",
    ),
    ("compare-order", "abba|random", "Order of A and B within the A/B blocks. Default: abba"),
    (
        "compare-pause",
        "SECONDS",
        "A/B mode: settle time after a server is idle before the other runs. Default: 1",
    ),
    (
        "scale",
        "auto|FACTOR",
        "Shrink lengths, prompt counts and TTFT/E2E SLOs by FACTOR. auto: 0.05 on the embedded engine, else 1",
    ),
)
INCONCLUSIVE_CHOICES = ("fail", "warn", "skip")


def register(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmperf", "LLM-serving performance tests (pytest-llmperf)")
    for name, metavar, help_text in _OPTIONS:
        dest = "llmperf_" + name.replace("-", "_")
        group.addoption(f"--llmperf-{name}", dest=dest, metavar=metavar, default=None, help=help_text)
        parser.addini(dest, help_text, default=None)
    group.addoption(
        "--llmperf-update",
        dest="llmperf_update",
        nargs="?",
        const="yes",
        default=None,
        choices=("yes", "force"),
        metavar="force",
        help="Record the runs into the baselines of the current pair (=force: also across a hard-key change)",
    )
    group.addoption(
        "--llmperf-api-key-env",
        dest="llmperf_api_key_env",
        metavar="VAR",
        default=None,
        help=f"Environment variable that holds the API key. Default: {API_KEY_ENV}. The key is never written",
    )
    group.addoption(
        "--llmperf-compare-api-key-env",
        dest="llmperf_compare_api_key_env",
        metavar="VAR",
        default=None,
        help="A/B mode: environment variable that holds B's API key. Default: the same key as A",
    )


def _get(config: pytest.Config, name: str) -> str | None:
    dest = "llmperf_" + name.replace("-", "_")
    value = config.getoption(dest)
    if value is None:
        value = config.getini(dest)
    return str(value) if value not in (None, "") else None


def resolve(config: pytest.Config) -> Settings:
    compat = _get(config, "compat") or "vllm"
    if compat not in COMPAT_MODES:
        raise pytest.UsageError(f"--llmperf-compat={compat!r}: expected one of {', '.join(COMPAT_MODES)}")
    endpoint = _get(config, "endpoint")
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise pytest.UsageError(
            f"--llmperf-endpoint={endpoint!r}: expected an http(s) URL such as http://127.0.0.1:8000"
        )
    timeout_text = _get(config, "ready-timeout") or "30"
    try:
        ready_timeout_s = float(timeout_text)
    except ValueError:
        ready_timeout_s = -1.0
    if not ready_timeout_s > 0:
        raise pytest.UsageError(f"--llmperf-ready-timeout={timeout_text!r}: expected a number of seconds > 0")
    key_env = config.getoption("llmperf_api_key_env") or API_KEY_ENV
    json_path = _get(config, "json")
    gpus_text = _get(config, "gpus")
    gpus = None
    if gpus_text is not None:
        if not gpus_text.isdigit() or int(gpus_text) < 1:
            raise pytest.UsageError(f"--llmperf-gpus={gpus_text!r}: expected a whole number of GPUs >= 1")
        gpus = int(gpus_text)
    profiles_path = _get(config, "profiles")
    inconclusive = _get(config, "inconclusive") or "warn"
    if inconclusive not in INCONCLUSIVE_CHOICES:
        raise pytest.UsageError(
            f"--llmperf-inconclusive={inconclusive!r}: expected one of {', '.join(INCONCLUSIVE_CHOICES)}"
        )
    tolerance = _number(config, "tolerance", low=0.0, high=1.0)
    repeats_text = _get(config, "repeats")
    if repeats_text is not None and (not repeats_text.isdigit() or int(repeats_text) < 1):
        raise pytest.UsageError(f"--llmperf-repeats={repeats_text!r}: expected a whole number >= 1")
    baselines = _get(config, "baselines") or "baselines"
    progress = _get(config, "progress") or "auto"
    if progress not in ("auto", "on", "off"):
        raise pytest.UsageError(f"--llmperf-progress={progress!r}: expected auto, on or off")
    busy_poll_text = _get(config, "busy-poll") or "off"
    if busy_poll_text not in ("on", "off"):
        raise pytest.UsageError(f"--llmperf-busy-poll={busy_poll_text!r}: expected on or off")
    scale_text = _get(config, "scale") or "auto"
    scale = None
    if scale_text != "auto":
        scale = _number(config, "scale", low=0.0, high=1.0 + 1e-9)
    compare = _get(config, "compare")
    if compare is not None and config.getoption("llmperf_update") is not None:
        raise pytest.UsageError(
            "--llmperf-update cannot be combined with --llmperf-compare: an A/B session judges B against A, "
            "not against the stored baselines; record baselines in a session without --llmperf-compare"
        )
    compare_order = _get(config, "compare-order") or "abba"
    if compare_order not in AB_ORDERS:
        raise pytest.UsageError(f"--llmperf-compare-order={compare_order!r}: expected one of {', '.join(AB_ORDERS)}")
    pause_text = _get(config, "compare-pause") or "1"
    try:
        compare_pause_s = float(pause_text)
    except ValueError:
        compare_pause_s = math.nan
    if not 0 <= compare_pause_s <= 600:
        raise pytest.UsageError(f"--llmperf-compare-pause={pause_text!r}: expected seconds between 0 and 600")
    return Settings(
        endpoint=endpoint,
        server=_get(config, "server"),
        model=_get(config, "model"),
        compat=compat,
        api_key=os.environ.get(key_env) or None,
        tokenizer=_get(config, "tokenizer"),
        ready_timeout_s=ready_timeout_s,
        hardware=_get(config, "hardware"),
        precision=_get(config, "precision"),
        json_path=_writable(config, "json", json_path),
        report_path=_writable(config, "report", _get(config, "report")),
        gpus=gpus,
        profiles_path=config.rootpath / profiles_path if profiles_path else None,
        baselines=config.rootpath / baselines,
        update=config.getoption("llmperf_update"),
        inconclusive=inconclusive,
        tolerance=tolerance,
        repeats=int(repeats_text) if repeats_text else None,
        scale=scale,
        progress=progress,
        compare=compare,
        compare_api_key=_compare_key(config, os.environ.get(key_env) or None),
        compare_order=compare_order,
        compare_pause_s=compare_pause_s,
        busy_poll=busy_poll_text == "on",
    )


def _compare_key(config: pytest.Config, a_key: str | None) -> str | None:
    variable = config.getoption("llmperf_compare_api_key_env")
    return a_key if variable is None else os.environ.get(variable) or None


def _writable(config: pytest.Config, name: str, text: str | None) -> Path | None:
    """``text`` as an output path, checked now, before any load is spent: its directory must take a new file."""
    if text is None:
        return None
    path = Path(text)
    if hasattr(config, "workerinput"):
        return path  # only the controller writes; it checked already
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as exc:
        raise pytest.UsageError(
            f"--llmperf-{name}={text!r}: cannot write there ({exc.strerror or exc}); choose a writable path"
        ) from None
    if path.is_dir():
        raise pytest.UsageError(f"--llmperf-{name}={text!r} is a directory; give a file name")
    return path


def _number(config: pytest.Config, name: str, *, low: float, high: float) -> float | None:
    text = _get(config, name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not low < value < high:
        raise pytest.UsageError(f"--llmperf-{name}={text!r}: expected a number between {low:g} and {high:g}")
    return value
