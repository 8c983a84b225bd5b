"""Command-line options and ini keys, resolved once into :class:`Settings`.

Every ``--llmperf-<name>`` option has an ini key ``llmperf_<name>``; the command line wins. Bad values raise
``pytest.UsageError`` naming the option, the value and what is accepted, before any load is spent.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pytest_llmperf.spec import AB_ORDERS, COMPAT_MODES, is_url, redact_url

API_KEY_ENV = "LLMPERF_API_KEY"
# One directory-name component, as baseline.py's _PAIR_PART: the pair is "<hardware>-<precision>", so "-"
# is the joint and neither part may hold it (nor "/" or "..", which would leave the baseline root).
_PAIR_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+]*")
_URL_EXAMPLE = "http://127.0.0.1:8000"


class LLMPerfConfigWarning(UserWarning):
    """An option that does not stop the run but probably does not do what was meant (an unset key variable)."""


HEADER_WARNINGS = pytest.StashKey[list[str]]()  # warnings the user's filters made errors, shown in the header


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
    session_spread: float | None = None  # the between-session SD assumed below 3 baseline sessions (None: auto)
    repeats: int | None
    scale: float | None  # None: auto
    progress: str
    compare: str | None  # A/B mode: B's URL or profile name
    compare_api_key: str | None  # B's key: its own variable when named, else A's
    compare_order: str
    compare_pause_s: float
    busy_poll: bool
    environment_guard: bool = True  # a REGRESSION seen while something disturbed the server is INCONCLUSIVE

    def __repr__(self) -> str:  # never show the key, nor credentials in a URL
        endpoint = None if self.endpoint is None else redact_url(self.endpoint)
        compare = None if self.compare is None else redact_url(self.compare)
        return (
            f"Settings(endpoint={endpoint!r}, server={self.server!r}, model={self.model!r}, compare={compare!r}, ...)"
        )


_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("endpoint", "URL", "Attach to a running OpenAI-compatible server at URL, e.g. http://127.0.0.1:8000"),
    ("server", "PROFILE", "Spawn a server from a profile (llamacpp-tiny, sim, or one of your own)"),
    ("model", "NAME", "Model name to request. Default: the first of the server's /v1/models"),
    ("compat", "MODE", "Metric semantics: vllm (default) or sglang"),
    ("tokenizer", "PATH", "Local tokenizer.json for exact prompt lengths. Default: the server's /tokenize"),
    ("ready-timeout", "SECONDS", "How long to wait for an attached server to answer. Default: 30"),
    ("hardware", "ID", "Hardware id of the baseline pair, e.g. h200x8 (letters, digits, . _ +). Default: detected"),
    ("precision", "ID", "Precision id of the baseline pair, e.g. fp8 or fp8_mtp (letters, digits, . _ +)"),
    ("json", "PATH", "Write the session's results as JSON to PATH"),
    ("report", "PATH", "Write a self-contained HTML report with plots to PATH"),
    ("gpus", "N", "GPUs behind the endpoint, for per-GPU throughput. Default: the profile's, else unknown"),
    ("profiles", "PATH", "YAML file of your own server profiles (see the README)"),
    ("baselines", "DIR", "Baseline root. Default: baselines/ under the rootdir"),
    ("inconclusive", "fail|warn|skip", "What an inconclusive verdict does to its test. Default: warn"),
    ("tolerance", "FRACTION", "Tolerance of every gating metric, e.g. 0.05 for five percent. Default: per metric"),
    (
        "session-spread",
        "FRACTION",
        "Between-session spread assumed while a baseline holds fewer than 3 sessions (and the prior its estimate "
        "is shrunk towards). Default: 0.03, 0.10 on the embedded engine",
    ),
    ("repeats", "N", "Most runs per perf test while its verdict is open. Default: 5"),
    ("progress", "auto|on|off", "Live progress of each run. Default: auto, on a terminal only"),
    (
        "environment-guard",
        "on|off",
        "Watch what else uses the server's cores and GPUs (and, remotely, its request counters) during each run; "
        "a regression seen while they were disturbed is inconclusive, never a failure. Default: on",
    ),
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
    if endpoint is not None:
        _check_url("endpoint", endpoint)
    server = _get(config, "server")
    if endpoint is not None and server is not None:
        raise pytest.UsageError(
            f"--llmperf-endpoint={redact_url(endpoint)} and --llmperf-server={server} cannot be combined: attach "
            "to a running server or spawn one from a profile, not both (clear an ini value with -o llmperf_server=)"
        )
    timeout_text = _get(config, "ready-timeout") or "30"
    try:
        ready_timeout_s = float(timeout_text)
    except ValueError:
        ready_timeout_s = -1.0
    if not ready_timeout_s > 0:
        raise pytest.UsageError(f"--llmperf-ready-timeout={timeout_text!r}: expected a number of seconds > 0")
    hardware, precision = _pair_id(config, "hardware"), _pair_id(config, "precision")
    key_env = config.getoption("llmperf_api_key_env") or API_KEY_ENV
    json_path = _get(config, "json")
    gpus_text = _get(config, "gpus")
    gpus = None
    if gpus_text is not None:
        if not gpus_text.isdigit() or int(gpus_text) < 1:
            raise pytest.UsageError(f"--llmperf-gpus={gpus_text!r}: expected a whole number of GPUs >= 1")
        gpus = int(gpus_text)
    profiles_text = _get(config, "profiles")
    profiles_path = config.rootpath / profiles_text if profiles_text else None
    if server is not None:
        _check_profile(server, profiles_text, profiles_path)
    inconclusive = _get(config, "inconclusive") or "warn"
    if inconclusive not in INCONCLUSIVE_CHOICES:
        raise pytest.UsageError(
            f"--llmperf-inconclusive={inconclusive!r}: expected one of {', '.join(INCONCLUSIVE_CHOICES)}"
        )
    tolerance = _number(config, "tolerance", low=0.0, high=1.0)
    session_spread = _number(config, "session-spread", low=0.0, high=1.0)
    repeats_text = _get(config, "repeats")
    if repeats_text is not None and (not repeats_text.isdigit() or int(repeats_text) < 1):
        raise pytest.UsageError(f"--llmperf-repeats={repeats_text!r}: expected a whole number >= 1")
    baselines = _get(config, "baselines") or "baselines"
    progress = _get(config, "progress") or "auto"
    if progress not in ("auto", "on", "off"):
        raise pytest.UsageError(f"--llmperf-progress={progress!r}: expected auto, on or off")
    guard_text = _get(config, "environment-guard") or "on"
    if guard_text not in ("on", "off"):
        raise pytest.UsageError(f"--llmperf-environment-guard={guard_text!r}: expected on or off")
    busy_poll_text = _get(config, "busy-poll") or "off"
    if busy_poll_text not in ("on", "off"):
        raise pytest.UsageError(f"--llmperf-busy-poll={busy_poll_text!r}: expected on or off")
    scale_text = _get(config, "scale") or "auto"
    scale = None
    if scale_text != "auto":
        scale = _number(config, "scale", low=0.0, high=1.0 + 1e-9)
    compare = _get(config, "compare")
    if compare is not None and is_url(compare):
        _check_url("compare", compare)
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
    json_out, report_out = _writable(config, "json", json_path), _writable(config, "report", _get(config, "report"))
    api_key = _api_key(config, "api-key-env", key_env)  # after every usage error: it may warn
    return Settings(
        endpoint=endpoint,
        server=server,
        model=_get(config, "model"),
        compat=compat,
        api_key=api_key,
        tokenizer=_get(config, "tokenizer"),
        ready_timeout_s=ready_timeout_s,
        hardware=hardware,
        precision=precision,
        json_path=json_out,
        report_path=report_out,
        gpus=gpus,
        profiles_path=profiles_path,
        baselines=_baselines_root(config, baselines),
        update=config.getoption("llmperf_update"),
        inconclusive=inconclusive,
        tolerance=tolerance,
        session_spread=session_spread,
        repeats=int(repeats_text) if repeats_text else None,
        scale=scale,
        progress=progress,
        compare=compare,
        compare_api_key=_compare_key(config, api_key),
        compare_order=compare_order,
        compare_pause_s=compare_pause_s,
        busy_poll=busy_poll_text == "on",
        environment_guard=guard_text == "on",
    )


def _compare_key(config: pytest.Config, a_key: str | None) -> str | None:
    variable = config.getoption("llmperf_compare_api_key_env")
    return a_key if variable is None else _api_key(config, "compare-api-key-env", variable)


def _api_key(config: pytest.Config, option: str, variable: str) -> str | None:
    """The key in ``variable``; a variable named on purpose but unset is warned about (the default may be unset)."""
    key = os.environ.get(variable) or None
    named = config.getoption("llmperf_" + option.replace("-", "_")) is not None
    if key is None and named and not hasattr(config, "workerinput"):  # the controller warns once
        _warn(config, f"--llmperf-{option}={variable}: {variable} is not set (or empty), so requests carry no API key")
    return key


def _warn(config: pytest.Config, message: str) -> None:
    """A start-up warning in pytest's warnings summary. Where ``filterwarnings = error`` would turn it into a
    crash of the whole session, it becomes a line of the report header instead: it never stops a run."""
    try:
        config.issue_config_time_warning(LLMPerfConfigWarning(message), stacklevel=2)
    except LLMPerfConfigWarning:
        config.stash.setdefault(HEADER_WARNINGS, []).append(message)


def _check_url(option: str, url: str) -> None:
    problem = _url_problem(url)
    if problem is not None:
        raise pytest.UsageError(
            f"--llmperf-{option}={redact_url(url)!r}: {problem}; expected an http(s) URL such as {_URL_EXAMPLE}"
        )


def _url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a server's root URL, or None. Checked at start-up, before any load: the HTTP
    clients would raise much later, and without naming the option."""
    if not is_url(url):
        return "not an http:// or https:// URL"
    if any(c.isspace() or not c.isprintable() for c in url):  # httpx would quote a space, even in the host
        return "it contains a space or a control character"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed "[" of an IPv6 address
        return str(exc)
    authority = parts.netloc.rpartition("@")[2]
    if not parts.hostname:
        return "no host name"
    # The port as written: urlsplit's own check raises with a message that names neither URL nor option.
    port = authority.rpartition("]")[2] if authority.startswith("[") else authority
    port = port.partition(":")[2]
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return f"the port {port!r} is not a number from 1 to 65535"
    import httpx  # only with a URL to check; the plugin's import stays cheap

    try:
        httpx.URL(url)
    except httpx.InvalidURL as exc:  # anything else httpx would refuse at the first request
        return str(exc)
    return None


def _pair_id(config: pytest.Config, name: str) -> str | None:
    """A hardware or precision id, which names a baseline directory: refused now, not by every test later."""
    text = _get(config, name)
    if text is not None and not _PAIR_ID.fullmatch(text):
        raise pytest.UsageError(
            f"--llmperf-{name}={text!r}: use letters, digits, '.', '_' and '+' only, starting with a letter or "
            "digit (it names the baseline directory <hardware>-<precision>, where '-' joins the two), "
            "e.g. h200x8 and fp8 or fp8_mtp"
        )
    return text


def _check_profile(server: str, profiles_text: str | None, profiles_path: Path | None) -> None:
    """An unknown ``--llmperf-server`` profile is a usage error now, not an error in every perf test."""
    from pytest_llmperf.errors import SpecError
    from pytest_llmperf.servers import profiles

    user = None
    if profiles_path is not None:
        try:
            user = profiles.load_profiles(profiles_path)
        except SpecError as exc:
            raise pytest.UsageError(f"--llmperf-profiles={profiles_text!r}: {exc}") from None
    try:
        profiles.get_profile(server, user)
    except SpecError as exc:
        raise pytest.UsageError(
            f"--llmperf-server={server!r}: {exc} Name that file with --llmperf-profiles=PATH"
            + (f" (now {profiles_text})." if profiles_text else ".")
        ) from None


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


def _baselines_root(config: pytest.Config, text: str) -> Path:
    """The baseline root; with ``--llmperf-update`` it must take new files, checked now rather than when the
    runs are written at the end of the session, after the whole budget was spent."""
    root = config.rootpath / text
    if config.getoption("llmperf_update") is None or hasattr(config, "workerinput"):
        return root  # only the controller writes baselines
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # created on the first write: its nearest existing parent must take it
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".llmperf-check."):
            pass
        problem = None
    except OSError as exc:
        problem = exc.strerror or str(exc)
    if problem is not None:
        where = "" if existing == root else f" (it does not exist yet; {existing} would hold it)"
        raise pytest.UsageError(
            f"--llmperf-update: cannot write baselines to {root}{where}: {problem}. Make it writable, or record "
            "into another directory with --llmperf-baselines=DIR"
        )
    return root


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
