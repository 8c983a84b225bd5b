"""Start-up validation of the options: every bad value is a usage error naming its option, before any load."""

from __future__ import annotations

import re

import httpx
import pytest

from pytest_llmperf import options
from pytest_llmperf.errors import BaselineError
from pytest_llmperf.harness.fixtures import SESSION_KEY
from pytest_llmperf.judge.baseline import BaselineStore
from pytest_llmperf.servers import control
from pytest_llmperf.spec import AB_ORDERS, COMPAT_MODES, Endpoint, Launch, redact_url

BROKEN_PROFILES = "profiles:\n  mine: {command: 'x --port {port}', startup_timeout_s: soon}\n"


@pytest.mark.parametrize(
    ("args", "option", "problem"),
    [
        (["--llmperf-endpoint=http://127.0.0.1:36399x"], "--llmperf-endpoint", "the port '36399x' is not a number"),
        (["--llmperf-endpoint=http://127.0.0.1:99999"], "--llmperf-endpoint", "the port '99999' is not a number"),
        (["--llmperf-endpoint=http://127.0.0.1:0"], "--llmperf-endpoint", "from 1 to 65535"),
        (["--llmperf-endpoint=http://:8000"], "--llmperf-endpoint", "no host name"),
        (["--llmperf-endpoint=http://[::1:8000"], "--llmperf-endpoint", "Invalid IPv6 URL"),
        (["--llmperf-endpoint=http://host name:8000"], "--llmperf-endpoint", "a space or a control character"),
        (["--llmperf-endpoint=127.0.0.1:8000"], "--llmperf-endpoint", "not an http:// or https:// URL"),
        (["--llmperf-compare=http://127.0.0.1:8000x"], "--llmperf-compare", "the port '8000x'"),
        (
            ["--llmperf-endpoint=http://127.0.0.1:9", "--llmperf-server=sim"],
            "--llmperf-server",
            "cannot be combined",
        ),
        (["--llmperf-server=simm"], "--llmperf-server", "did you mean 'sim'?"),
        (["--llmperf-server=mine", "--llmperf-profiles=broken.yaml"], "--llmperf-profiles", "startup_timeout_s"),
        (["--llmperf-precision=fp8-mtp"], "--llmperf-precision", "letters, digits, '.', '_' and '+'"),
        (["--llmperf-precision=../../etc"], "--llmperf-precision", "letters, digits"),
        (["--llmperf-hardware=h200x8/.."], "--llmperf-hardware", "letters, digits"),
        (["--llmperf-hardware=.hidden"], "--llmperf-hardware", "starting with a letter or digit"),
        (["--llmperf-session-spread=wide"], "--llmperf-session-spread", "wide"),
        (["--llmperf-session-spread=2"], "--llmperf-session-spread", "2"),
        (["--llmperf-environment-guard=maybe"], "--llmperf-environment-guard", "expected on or off"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(
    pytester: pytest.Pytester, args: list[str], option: str, problem: str
) -> None:
    (pytester.path / "broken.yaml").write_text(BROKEN_PROFILES)
    config = pytester.parseconfig(*args)
    with pytest.raises(pytest.UsageError) as caught:
        options.resolve(config)
    message = str(caught.value)
    assert message.startswith(option) or f" {option}=" in message, message
    assert problem in message


# Per option that checks its value: one it refuses, one it takes, and what the refusal must tell the user to give.
REFUSED = {
    "endpoint": ("127.0.0.1:8000", "http://127.0.0.1:8000", "expected an http(s) URL such as http://"),
    "compat": ("tgi", "sglang", "expected one of vllm, sglang"),
    "ready-timeout": ("0", "0.5", "expected a number of seconds > 0"),
    "hardware": ("h200/x8", "h200x8", "use letters, digits, '.', '_' and '+' only"),
    "precision": ("fp8-mtp", "fp8_mtp", "use letters, digits, '.', '_' and '+' only"),
    "gpus": ("1.5", "8", "expected a whole number of GPUs >= 1"),
    "gpu-cost-per-hour": ("$2", "2.5", "expected a price in USD per GPU-hour > 0"),
    "inconclusive": ("ignore", "fail", "expected one of fail, warn, skip"),
    "tolerance": ("5%", "0.05", "expected a number between 0 and 1"),
    "session-spread": ("1", "0.1", "expected a number between 0 and 1"),
    "repeats": ("0", "3", "expected a whole number >= 1"),
    "progress": ("yes", "off", "expected one of auto, on, off"),
    "environment-guard": ("maybe", "off", "expected on or off"),
    "busy-poll": ("1", "on", "expected on or off"),
    "client-procs": ("0", "auto", "expected auto or client processes between 1 and 1024"),
    "ray": ("cluster", "local", "expected auto (this machine's Ray cluster, or RAY_ADDRESS), local, ray://"),
    "compare": ("http://b:80x", "sim", "expected an http(s) URL such as http://"),
    "compare-order": ("sideways", "random", "expected one of abba, random"),
    "compare-pause": ("601", "0", "expected seconds between 0 and 600"),
    "scale": ("2", "1", "expected auto or a number between 0 and 1"),
    "update": ("bogus", "force", "expected one of yes, force"),
    "history": ("tests/", "sqlite:///h.db", "expected a database URL, sqlite:///path/history.db or postgresql://"),
}
CHECKED = [option for option in options.OPTIONS if option.choices is not None or option.parse is not str]


@pytest.mark.parametrize(
    ("option", "source"),
    [pytest.param(option, "command line", id=option.name) for option in CHECKED]
    + [pytest.param(option, "ini", id=f"{option.name}-ini") for option in CHECKED if option.ini],
)
def test_each_option_refuses_a_bad_value_saying_what_to_give(
    pytester: pytest.Pytester, option: options.Option, source: str
) -> None:
    bad, good, remedy = REFUSED[option.name]  # a KeyError: a new checked option needs a row above
    if source == "ini":
        pytester.makeini(f"[pytest]\n{option.dest} = {bad}\n")
    with pytest.raises(pytest.UsageError) as caught:
        options.resolve(pytester.parseconfig(*([f"{option.flag}={bad}"] if source == "command line" else [])))
    message = str(caught.value)
    assert message.startswith(f"{option.flag}={bad!r}"), message
    assert remedy in message, message
    assert (f"(ini {option.dest})" in message) == (source == "ini"), message
    # The value given is taken, and on the command line it wins over a bad one in the ini.
    assert options.resolve(pytester.parseconfig(f"{option.flag}={good}"))


def test_an_unknown_profile_lists_the_available_ones_and_the_profiles_option(pytester: pytest.Pytester) -> None:
    (pytester.path / "mine.yaml").write_text("profiles:\n  mine: {extends: sim}\n")
    with pytest.raises(pytest.UsageError) as caught:
        options.resolve(pytester.parseconfig("--llmperf-server=simm", "--llmperf-profiles=mine.yaml"))
    message = str(caught.value)
    assert re.search(r"Known profiles: .*llamacpp-tiny.*mine.*sim", message), message
    assert "--llmperf-profiles=PATH (now mine.yaml)" in message
    # A profile of the user's file is known.
    assert options.resolve(pytester.parseconfig("--llmperf-server=mine", "--llmperf-profiles=mine.yaml"))


@pytest.mark.parametrize("value", ["h200x8", "fp8", "fp8_mtp", "fp8+mtp", "w4a16.v2", "cpu", "B200x4"])
def test_good_pair_ids_are_accepted(pytester: pytest.Pytester, value: str) -> None:
    settings = options.resolve(pytester.parseconfig(f"--llmperf-precision={value}", f"--llmperf-hardware={value}"))
    assert (settings.hardware, settings.precision) == (value, value)


@pytest.mark.parametrize("value", ["fp8", "fp8_mtp", "fp8+mtp", "a.b", "fp8-mtp", "../x", ".x", "a/b", "", "x y"])
def test_pair_ids_accepted_at_start_up_are_those_the_baseline_store_takes(value: str) -> None:
    store = BaselineStore("baselines")
    try:
        store.path_for(value, "fp8", "tests/test_x.py")
        stored = True
    except BaselineError:
        stored = False
    assert bool(options._PAIR_ID.fullmatch(value)) == stored


def test_the_choices_of_compat_and_compare_order_are_those_the_spec_takes() -> None:
    assert tuple(mode.value for mode in options.Compat) == COMPAT_MODES
    assert tuple(order.value for order in options.CompareOrder) == AB_ORDERS


def test_a_bad_value_stops_pytest_before_collection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--llmperf-precision=fp8-mtp")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llmperf-precision='fp8-mtp': use letters, digits*"])
    assert "collected" not in result.stdout.str()


def test_a_report_without_the_html_extra_is_refused_at_start_up(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(options, "_has_matplotlib", lambda: False)
    with pytest.raises(pytest.UsageError) as caught:
        options.resolve(pytester.parseconfig("--llmperf-report=out/report.html"))
    message = str(caught.value)
    assert message.startswith("--llmperf-report='out/report.html': "), message
    assert 'pip install "pytest-llmperf[html]"' in message, message
    assert not (pytester.path / "out").exists()  # refused before anything is created
    # Without a report, matplotlib is not needed.
    assert options.resolve(pytester.parseconfig("--llmperf-json=out.json")).report_path is None
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--llmperf-report=report.html")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: --llmperf-report='report.html': " in result.stderr.str()
    assert 'pip install "pytest-llmperf[html]"' in result.stderr.str()
    assert "collected" not in result.stdout.str()


def test_the_html_extra_is_found_where_it_is_installed() -> None:
    assert options._has_matplotlib()  # the dev extra installs it


# --- API key variables named but not set: a warning, never a stop -------------------------------------------


def test_an_unset_api_key_variable_is_warned_about(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--llmperf-api-key-env=NO_SUCH_KEY", "--llmperf-compare-api-key-env=NO_SUCH_KEY")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*LLMPerfConfigWarning: --llmperf-api-key-env=NO_SUCH_KEY: NO_SUCH_KEY is not set*no API key*",
            "*LLMPerfConfigWarning: --llmperf-compare-api-key-env=NO_SUCH_KEY: NO_SUCH_KEY is not set*",
        ]
    )


@pytest.mark.parametrize("filters", [["-W", "error"], ["-o", "filterwarnings=error"]], ids=["cmdline", "ini"])
def test_warnings_made_errors_do_not_stop_the_run_and_show_in_the_header(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, filters: list[str]
) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--llmperf-api-key-env=NO_SUCH_KEY", *filters)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["llmperf: warning: --llmperf-api-key-env=NO_SUCH_KEY: NO_SUCH_KEY is not set*"])


def test_a_set_or_default_key_variable_is_not_warned_about(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_KEY", "sk-x")
    monkeypatch.delenv("LLMPERF_API_KEY", raising=False)  # the default variable may well be unset
    pytester.makepyfile("def test_x():\n    pass\n")
    for args in (["--llmperf-api-key-env=MY_KEY"], []):
        result = pytester.runpytest(*args)
        result.assert_outcomes(passed=1)
        assert "LLMPerfConfigWarning" not in result.stdout.str()


# --- URLs: credentials never shown, and a URL that slipped through never crashes a message ---------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pw@host:8000/v1", "http://host:8000/v1"),
        ("http://host:8000", "http://host:8000"),
        ("https://u:pw@[::1]:8000?x=1", "https://[::1]:8000?x=1"),
        ("http://u:pw@Host:99999", "http://Host:99999"),  # a bad port is redacted too, not raised on
        ("http://u:p@ss@host/a@b", "http://host/a@b"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_no_repr_shows_url_credentials(pytester: pytest.Pytester) -> None:
    endpoint = Endpoint(url="http://user:pw-s3cret@127.0.0.1:8001", model="m", api_key="sk-k3y")
    launch = Launch(argv=("srun",), url="http://user:pw-s3cret@node01:8000", env={"HF_TOKEN": "hf-t0ken"})
    config = pytester.parseconfigure(
        "--llmperf-endpoint=http://user:pw-s3cret@127.0.0.1:8001", "--llmperf-compare=http://u:pw-s3cret@h:8002"
    )
    settings = config.stash[SESSION_KEY].settings
    for text in (repr(endpoint), repr(launch), repr(settings)):
        for secret in ("s3cret", "k3y", "t0ken"):
            assert secret not in text, text
    assert "127.0.0.1:8001" in repr(endpoint)
    assert "127.0.0.1:8001" in repr(settings)


def test_transport_errors_are_described_for_a_url_with_a_bad_port() -> None:
    exc = httpx.ConnectError("[Errno 111] Connection refused")
    message = control._describe_transport_error(exc, "http://u:pw@127.0.0.1:99999/v1/models", 1.0)
    assert "nothing listens on 127.0.0.1:99999" in message
    assert "pw" not in message


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("--llmperf-history", "sqlite:///{root}/.llmperf/history.db"),
        ("--llmperf-history=perf/h.db", "sqlite:///{root}/perf/h.db"),
        ("--llmperf-history=postgresql://perf@db/llmperf", "postgresql://perf@db/llmperf"),
    ],
)
def test_history_urls(pytester: pytest.Pytester, given: str, expected: str) -> None:
    settings = options.resolve(pytester.parseconfig(given))
    assert settings.history == expected.format(root=pytester.path.as_posix())


def test_a_refused_history_url_never_shows_its_password(pytester: pytest.Pytester) -> None:
    with pytest.raises(pytest.UsageError) as caught:
        options.resolve(pytester.parseconfig("--llmperf-history=postgresq://u:pa/ss?x@db/h"))
    assert "pa/ss" not in str(caught.value)
    assert "db/h" in str(caught.value)
