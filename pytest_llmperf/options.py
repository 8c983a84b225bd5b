"""Command-line options and ini keys, resolved once into :class:`Settings`.

Each option is one row of :data:`OPTIONS`, which drives both its registration and its checks. An option
``--llmperf-<name>`` has an ini key ``llmperf_<name>`` unless it is the command line's only; the command line
wins. Bad values raise ``pytest.UsageError`` naming the option, the value and what is accepted, before any load
is spent.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from pytest_llmperf.errors import LLMPerfConfigWarning
from pytest_llmperf.spec import is_url, redact_url

API_KEY_ENV = "LLMPERF_API_KEY"
# One directory-name component, as baseline.py's _PAIR_PART: the pair is "<hardware>-<precision>", so "-"
# is the joint and neither part may hold it (nor "/" or "..", which would leave the baseline root).
_PAIR_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+]*")
_URL_EXAMPLE = "http://127.0.0.1:8000"


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
    history: str | None = None  # the history database's SQLAlchemy URL (None: no history)
    gpu_cost_per_hour: float | None = None  # USD per GPU-hour (None: the profile's, else unknown)
    client_procs: int | None = 1  # client processes (or Ray actors) per run; None: auto
    ray: str | None = None  # a Ray cluster's address, "auto" or "local": the client's shards are Ray actors

    def __repr__(self) -> str:  # never show the key, nor credentials in a URL
        endpoint = None if self.endpoint is None else redact_url(self.endpoint)
        compare = None if self.compare is None else redact_url(self.compare)
        return (
            f"Settings(endpoint={endpoint!r}, server={self.server!r}, model={self.model!r}, compare={compare!r}, ...)"
        )


class Compat(str, Enum):
    """Metric semantics (``spec.COMPAT_MODES``)."""

    VLLM = "vllm"
    SGLANG = "sglang"


class Inconclusive(str, Enum):
    """What an inconclusive verdict does to its test."""

    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"


class Progress(str, Enum):
    AUTO = "auto"  # on a terminal only
    ON = "on"
    OFF = "off"


class CompareOrder(str, Enum):
    """Order of A and B within A/B mode's blocks (``spec.AB_ORDERS``)."""

    ABBA = "abba"
    RANDOM = "random"


class Update(str, Enum):
    YES = "yes"
    FORCE = "force"  # also across a hard-key change


class Switch(str, Enum):
    """The values of an on/off option, which becomes a bool."""

    ON = "on"
    OFF = "off"


class _Refused(ValueError):
    """A value its option does not take; the message says what it takes instead."""


@dataclass(frozen=True, slots=True)
class Number:
    """A parser of a number in a range (each end in it or not), whose refusal states the range."""

    low: float
    high: float | None = None  # None: no upper bound
    low_in: bool = False
    high_in: bool = False
    whole: bool = False
    unit: str = ""  # what it counts, for the message: "seconds", "GPUs"
    auto: bool = False  # "auto" is taken too, as None

    def __call__(self, text: str) -> float | None:
        if self.auto and text == "auto":
            return None
        if self.whole:  # digits only: int() would also take "+3", " 3" and "1_0"
            value: float = int(text) if text.isascii() and text.isdigit() else math.nan
        else:
            try:
                value = float(text)
            except ValueError:
                value = math.nan  # refused below, as every comparison with it is false
        above = value >= self.low if self.low_in else value > self.low
        below = self.high is None or (value <= self.high if self.high_in else value < self.high)
        if not (above and below):
            raise _Refused(f"expected {'auto or ' if self.auto else ''}{self.described}")
        return value

    @property
    def described(self) -> str:
        if self.high is not None:
            return f"{self.unit or 'a number'} between {self.low:g} and {self.high:g}"
        number = "a whole number" if self.whole else "a number"
        unit = f" of {self.unit}" if self.unit else ""
        return f"{number}{unit} {'>=' if self.low_in else '>'} {self.low:g}"


def _url(text: str) -> str:
    problem = _url_problem(text)
    if problem is not None:
        raise _Refused(f"{problem}; expected an http(s) URL such as {_URL_EXAMPLE}")
    return text


def _url_or_profile(text: str) -> str:
    return _url(text) if is_url(text) else text


def _pair_id(text: str) -> str:
    """A hardware or precision id, which names a baseline directory: refused now, not by every test later."""
    if not _PAIR_ID.fullmatch(text):
        raise _Refused(
            "use letters, digits, '.', '_' and '+' only, starting with a letter or digit (it names the baseline "
            "directory <hardware>-<precision>, where '-' joins the two), e.g. h200x8 and fp8 or fp8_mtp"
        )
    return text


HISTORY_DEFAULT = "default"  # --llmperf-history alone: SQLite under the rootdir
_HISTORY_SCHEMES = ("sqlite", "postgresql", "postgres")


_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def _history_url(text: str) -> str:
    """A database URL (SQLAlchemy's form), an SQLite file (``*.db``, relative to the rootdir) or ``default``;
    anything else, a test path taken as the value above all, is refused saying the forms."""
    scheme = text.partition(":")[0].partition("+")[0].lower() if "://" in text else ""
    if text == HISTORY_DEFAULT or scheme in _HISTORY_SCHEMES or (not scheme and text.endswith(_SQLITE_SUFFIXES)):
        return text
    raise _Refused(
        "expected a database URL, sqlite:///path/history.db or postgresql://user@host/db (the password from "
        "PGPASSWORD or ~/.pgpass), an SQLite file such as perf/history.db, or --llmperf-history alone (after the "
        "test paths) for sqlite:///<rootdir>/.llmperf/history.db"
    )


def _price(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise _Refused("expected a price in USD per GPU-hour > 0, such as 2.5")
    return value


def _ray_address(text: str) -> str:
    """``auto``, ``local``, ``ray://HOST:PORT`` or ``HOST:PORT``; Ray must be installed (said before any load)."""
    if not (text in ("auto", "local") or text.startswith("ray://") or re.fullmatch(r"[\w.\-\[\]:]+:\d+", text)):
        raise _Refused(
            "expected auto (this machine's Ray cluster, or RAY_ADDRESS), local, ray://HOST:10001 or HOST:6379"
        )
    from pytest_llmperf.client.rayshards import ray_installed

    if not ray_installed():
        raise _Refused("Ray is not installed: pip install 'pytest-llmperf[ray]' (on every node of the cluster)")
    return text


def _on_off(text: str) -> bool:
    if text not in {switch.value for switch in Switch}:
        raise _Refused("expected on or off")
    return text == Switch.ON


@dataclass(frozen=True, slots=True)
class Option:
    """One ``--llmperf-<name>`` option and its ini key ``llmperf_<name>``: how it is shown, read and checked."""

    name: str
    metavar: str
    help: str
    _: KW_ONLY
    field: str | None = None  # the Settings field its value fills; None: resolve derives a field from it
    parse: Callable[[str], object] = str  # text -> value; raises _Refused saying what it takes
    choices: type[Enum] | None = None  # the values it takes (then parse is not used)
    default: str | None = None  # as text, parsed like a given value; None: unset
    ini: bool = True  # False: the command line only
    bare: str | None = None  # the value of the flag given without one (--llmperf-update)

    @property
    def flag(self) -> str:
        return f"--llmperf-{self.name}"

    @property
    def dest(self) -> str:
        return "llmperf_" + self.name.replace("-", "_")

    def value(self, text: str) -> object:
        if self.choices is None:
            return self.parse(text)
        taken = [choice.value for choice in self.choices]
        if text not in taken:  # a flag that may come alone takes the next argument: a test path, say
            alone = f", or {self.flag} alone after the test paths" if self.bare is not None else ""
            raise _Refused(f"expected one of {', '.join(taken)}{alone}")
        return text


# In --help's order. A new option is a row here and a field of Settings.
OPTIONS: tuple[Option, ...] = (
    Option(
        "endpoint",
        "URL",
        "Attach to a running OpenAI-compatible server at URL, e.g. http://127.0.0.1:8000",
        field="endpoint",
        parse=_url,
    ),
    Option(
        "server", "PROFILE", "Spawn a server from a profile (llamacpp-tiny, sim, or one of your own)", field="server"
    ),
    Option("model", "NAME", "Model name to request. Default: the first of the server's /v1/models", field="model"),
    Option(
        "compat", "MODE", "Metric semantics: vllm (default) or sglang", field="compat", choices=Compat, default="vllm"
    ),
    Option(
        "tokenizer",
        "PATH",
        "Local tokenizer.json for exact prompt lengths. Default: the server's /tokenize",
        field="tokenizer",
    ),
    Option(
        "ready-timeout",
        "SECONDS",
        "How long to wait for an attached server to answer. Default: 30",
        field="ready_timeout_s",
        parse=Number(0, unit="seconds"),
        default="30",
    ),
    Option(
        "hardware",
        "ID",
        "Hardware id of the baseline pair, e.g. h200x8 (letters, digits, . _ +). Default: detected",
        field="hardware",
        parse=_pair_id,
    ),
    Option(
        "precision",
        "ID",
        "Precision id of the baseline pair, e.g. fp8 or fp8_mtp (letters, digits, . _ +)",
        field="precision",
        parse=_pair_id,
    ),
    Option("json", "PATH", "Write the session's results as JSON to PATH"),
    Option("report", "PATH", "Write a self-contained HTML report with plots to PATH"),
    Option(
        "gpus",
        "N",
        "GPUs behind the endpoint, for per-GPU throughput. Default: the profile's, else unknown",
        field="gpus",
        parse=Number(1, low_in=True, whole=True, unit="GPUs"),
    ),
    Option(
        "gpu-cost-per-hour",
        "USD",
        "Price of one GPU-hour, for the cost per million tokens (needs the GPU count). Default: the profile's, "
        "else unknown",
        field="gpu_cost_per_hour",
        parse=_price,
    ),
    Option("profiles", "PATH", "YAML file of your own server profiles (see the README)"),
    Option("baselines", "DIR", "Baseline root. Default: baselines/ under the rootdir", default="baselines"),
    Option(
        "inconclusive",
        "fail|warn|skip",
        "What an inconclusive verdict does to its test. Default: warn",
        field="inconclusive",
        choices=Inconclusive,
        default="warn",
    ),
    Option(
        "tolerance",
        "FRACTION",
        "Tolerance of every gating metric, e.g. 0.05 for five percent. Default: per metric",
        field="tolerance",
        parse=Number(0, 1),
    ),
    Option(
        "session-spread",
        "FRACTION",
        "Between-session spread assumed while a baseline holds fewer than 3 sessions (and the prior its estimate "
        "is shrunk towards). Default: 0.03, 0.10 on the embedded engine",
        field="session_spread",
        parse=Number(0, 1),
    ),
    Option(
        "repeats",
        "N",
        "Most runs per perf test while its verdict is open. Default: 5",
        field="repeats",
        parse=Number(1, low_in=True, whole=True),
    ),
    Option(
        "progress",
        "auto|on|off",
        "Live progress of each run. Default: auto, on a terminal only",
        field="progress",
        choices=Progress,
        default="auto",
    ),
    Option(
        "environment-guard",
        "on|off",
        "Watch what else uses the server's cores and GPUs (and, remotely, its request counters) during each run; "
        "a regression seen while they were disturbed is inconclusive, never a failure. Default: on",
        field="environment_guard",
        parse=_on_off,
        default="on",
    ),
    Option(
        "busy-poll",
        "on|off",
        "Keep the load generator's event loop polling during a run instead of sleeping: events are stamped "
        "without the CPU's wake-up delay (up to 1 ms on some virtual machines), for a full core. Default: off",
        field="busy_poll",
        parse=_on_off,
        default="off",
    ),
    Option(
        "client-procs",
        "N|auto",
        "Client processes that send each run's load together (one event loop and connection pool each, on cores "
        "away from a local server's), merged into one run; auto: enough for the event rate an earlier run of the "
        "session saw, at most the free cores. With --llmperf-ray: Ray actors. Default: 1",
        field="client_procs",
        parse=Number(1, 1024, low_in=True, high_in=True, whole=True, auto=True, unit="client processes"),
        default="1",
    ),
    Option(
        "ray",
        "ADDRESS|auto|local",
        "Place the client's shards as Ray actors on the nodes of a Ray cluster (extra [ray]): its address, auto "
        "(the cluster this machine belongs to, or RAY_ADDRESS) or local (a private instance for this session)",
        field="ray",
        parse=_ray_address,
    ),
    Option(
        "history",
        "URL",
        "Append every run to a history database: alone, SQLite under <rootdir>/.llmperf/history.db; or "
        "sqlite:///PATH, postgresql://USER@HOST/DB. Read by `python -m pytest_llmperf.history`",
        parse=_history_url,
        bare=HISTORY_DEFAULT,
    ),
    Option(
        "compare",
        "URL|PROFILE",
        "A/B mode: run every perf test interleaved on the server under test (A) and this one (B) and judge B vs A",
        field="compare",
        parse=_url_or_profile,
    ),
    Option(
        "compare-order",
        "abba|random",
        "Order of A and B within the A/B blocks. Default: abba",
        field="compare_order",
        choices=CompareOrder,
        default="abba",
    ),
    Option(
        "compare-pause",
        "SECONDS",
        "A/B mode: settle time after a server is idle before the other runs. Default: 1",
        field="compare_pause_s",
        parse=Number(0, 600, low_in=True, high_in=True, unit="seconds"),
        default="1",
    ),
    Option(
        "scale",
        "auto|FACTOR",
        "Shrink lengths, prompt counts and TTFT/E2E SLOs by FACTOR. auto: 0.05 on the embedded engine, else 1",
        field="scale",
        parse=Number(0, 1, high_in=True, auto=True),
        default="auto",
    ),
    # The command line only: the baselines a session records, and where the keys are, are each run's choice.
    Option(
        "update",
        "force",
        "Record the runs into the baselines of the current pair (=force: also across a hard-key change)",
        field="update",
        choices=Update,
        ini=False,
        bare=Update.YES.value,
    ),
    Option(
        "api-key-env",
        "VAR",
        f"Environment variable that holds the API key. Default: {API_KEY_ENV}. The key is never written",
        default=API_KEY_ENV,
        ini=False,
    ),
    Option(
        "compare-api-key-env",
        "VAR",
        "A/B mode: environment variable that holds B's API key. Default: the same key as A",
        ini=False,
    ),
)


def register(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmperf", "LLM-serving performance tests (pytest-llmperf)")
    for option in OPTIONS:
        bare = {} if option.bare is None else {"nargs": "?", "const": option.bare}
        # No argparse default: an option not given falls back to its ini key, then to its default, in resolve.
        group.addoption(option.flag, dest=option.dest, metavar=option.metavar, default=None, help=option.help, **bare)
        if option.ini:
            parser.addini(option.dest, option.help, default=None)


def resolve(config: pytest.Config) -> Settings:
    """Every option's value, checked alone (its row), then together; a bad one is a usage error before any load."""
    value: dict[str, Any] = {option.name: _value(config, option) for option in OPTIONS}
    _check_not_both(value["endpoint"], value["server"], value["compare"], value["update"])
    profiles_path = config.rootpath / value["profiles"] if value["profiles"] else None
    if value["server"] is not None:
        _check_profile(value["server"], value["profiles"], profiles_path)
    _check_report_extra(value["report"])
    history = _history(config, value["history"])
    # What creates files or warns comes last, once no usage error can follow.
    baselines = _baselines_root(config, value["baselines"], value["update"])
    json_path, report_path = _writable(config, "json", value["json"]), _writable(config, "report", value["report"])
    api_key = _api_key(config, "api-key-env", value["api-key-env"])
    compare_key_env = value["compare-api-key-env"]
    compare_api_key = api_key if compare_key_env is None else _api_key(config, "compare-api-key-env", compare_key_env)
    return Settings(
        **{option.field: value[option.name] for option in OPTIONS if option.field is not None},
        profiles_path=profiles_path,
        baselines=baselines,
        json_path=json_path,
        report_path=report_path,
        api_key=api_key,
        compare_api_key=compare_api_key,
        history=history,
    )


def _value(config: pytest.Config, option: Option) -> object:
    """The option's value from the command line, else its ini key, else its default; a bad one is a usage error."""
    text, source = _text(config.getoption(option.dest)), ""
    if text is None and option.ini:
        text, source = _text(config.getini(option.dest)), f" (ini {option.dest})"
    if text is None:
        text, source = option.default, ""
    if text is None:
        return None
    try:
        return option.value(text)
    except _Refused as exc:
        raise pytest.UsageError(f"{option.flag}={_without_credentials(text)!r}{source}: {exc}") from None


def _without_credentials(text: str) -> str:
    """A refused value fit for a message: whatever stands between ``://`` and the last ``@`` goes, since a
    database password may hold ``/`` or ``?``, which end the authority for :func:`redact_url`."""
    scheme, sep, rest = text.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}" if sep and "@" in rest else text


def _text(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def _check_not_both(endpoint: str | None, server: str | None, compare: str | None, update: str | None) -> None:
    """Options that exclude each other."""
    if endpoint is not None and server is not None:
        raise pytest.UsageError(
            f"--llmperf-endpoint={redact_url(endpoint)} and --llmperf-server={server} cannot be combined: attach "
            "to a running server or spawn one from a profile, not both (clear an ini value with -o llmperf_server=)"
        )
    if compare is not None and update is not None:
        raise pytest.UsageError(
            "--llmperf-update cannot be combined with --llmperf-compare: an A/B session judges B against A, "
            "not against the stored baselines; record baselines in a session without --llmperf-compare"
        )


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


def _check_report_extra(report: str | None) -> None:
    """The HTML report's charts are drawn with matplotlib, the extra ``html``: a missing one is said now, not
    when the report is written at the end of the session, after the whole budget was spent."""
    if report is not None and not _has_matplotlib():
        raise pytest.UsageError(
            f"--llmperf-report={report!r}: the HTML report draws its charts with matplotlib, which is not "
            'installed; pip install "pytest-llmperf[html]" (or leave out --llmperf-report)'
        )


def _history(config: pytest.Config, url: str | None) -> str | None:
    """The history database's URL, ``default`` made concrete; its libraries (the extra ``history``) are checked
    now. Whether the database itself opens is checked when the session starts, by the controller."""
    if url is None:
        return None
    if importlib.util.find_spec("sqlalchemy") is None:
        raise pytest.UsageError(
            "--llmperf-history: the history database needs SQLAlchemy, which is not installed; "
            'pip install "pytest-llmperf[history]" (or leave out --llmperf-history)'
        )
    if url == HISTORY_DEFAULT:
        return "sqlite:///" + (config.rootpath / ".llmperf" / "history.db").as_posix()
    if "://" not in url:  # an SQLite file, relative to the rootdir as the baselines are
        return "sqlite:///" + (config.rootpath / url).as_posix()
    return url


def _has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


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


def _baselines_root(config: pytest.Config, text: str, update: str | None) -> Path:
    """The baseline root; with ``--llmperf-update`` it must take new files, checked now rather than when the
    runs are written at the end of the session, after the whole budget was spent."""
    root = config.rootpath / text
    if update is None or hasattr(config, "workerinput"):
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
