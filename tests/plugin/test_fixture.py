"""The llmperf fixture as a user drives it: a test file, command-line options, the simulator as server."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web
from threaded_app import ThreadedApp

SECRET = "sk-test-0123456789abcdefghijklmnop"

USER_TEST = """
import pytest

@pytest.mark.perf(input_len=24, output_len=8, num_prompts=12, concurrency=4)
def test_latency(llmperf):
    result = llmperf.run()
    assert result.completed == 12
    assert result.failed == 0
    assert result.median_ttft_ms > 0
    assert result["output_throughput"] == result.output_throughput > 0

def test_override_wins(llmperf):
    result = llmperf.run(input_len=16, output_len=4, num_prompts=5, concurrency=2, api="chat")
    assert result.completed == 5
    assert result.total_output_tokens == 20
"""


def test_user_test_measures_the_simulator(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(USER_TEST)
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*llmperf results*", "*test_latency*24/8 c4*1*0*NO_BASELINE"])


def test_no_server_skips_naming_the_three_ways_forward(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_LLMPERF_LLAMA_SERVER", str(pytester.path / "no-such-llama-server"))
    pytester.makepyfile(USER_TEST)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*pytest-llmperf[[]llamacpp[]]*--llmperf-endpoint=URL*--llmperf-server=PROFILE*"])


def test_unreachable_endpoint_fails_fast_naming_the_url(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(USER_TEST)
    started = time.monotonic()
    result = pytester.runpytest("--llmperf-endpoint=http://127.0.0.1:9", "--llmperf-ready-timeout=2")
    assert time.monotonic() - started < 20
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*http://127.0.0.1:9*"])


def test_unknown_run_argument_lists_valid_names(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(
        """
        def test_typo(llmperf):
            llmperf.run(concurency=4)
        """
    )
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*unknown argument 'concurency'*Did you mean 'concurrency'*Valid names:*"])


def test_ill_typed_marker_kwarg_names_the_expected_type(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.perf(concurrency="8")
        def test_bad(llmperf):
            llmperf.run()
        """
    )
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*concurrency='8' has type str, expected int*"])


def test_closest_marker_wins(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.perf(input_len=8, output_len=3, num_prompts=4)

        @pytest.mark.perf(num_prompts=2)
        class TestX:
            @pytest.mark.perf(output_len=5)
            def test_merge(self, llmperf):
                result = llmperf.run()
                assert result.completed == 2
                assert result.total_output_tokens == 10
        """
    )
    pytester.runpytest(f"--llmperf-endpoint={sim_url}").assert_outcomes(passed=1)


def test_json_and_junit_never_contain_the_api_key(
    pytester: pytest.Pytester, sim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMPERF_API_KEY", SECRET)
    pytester.makepyfile(USER_TEST)
    out = pytester.path / "r.json"
    junit = pytester.path / "j.xml"
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}", f"--llmperf-json={out}", f"--junitxml={junit}", "-v")
    result.assert_outcomes(passed=2)
    document = json.loads(out.read_text())
    assert [r["nodeid"].split("::")[-1] for r in document["results"]] == ["test_latency", "test_override_wins"]
    assert document["results"][0]["summary"]["completed"] == 12
    for text in (out.read_text(), junit.read_text(), result.stdout.str()):
        assert SECRET not in text
    assert 'name="llmperf.ttft_ms.p50"' in junit.read_text()


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["inline", "xdist"])
def test_junit_properties_under_xunit2(pytester: pytest.Pytester, sim_url: str, workers: list[str]) -> None:
    pytester.makepyfile(USER_TEST)
    junit = pytester.path / "j.xml"
    result = pytester.runpytest(
        f"--llmperf-endpoint={sim_url}", f"--junitxml={junit}", "-o", "junit_family=xunit2", "-W", "error", *workers
    )
    result.assert_outcomes(passed=2)
    text = junit.read_text()
    for name in ("llmperf.ttft_ms.p99", "llmperf.tpot_ms.p50", "llmperf.e2e_ms.p90", "llmperf.output_tok_s"):
        assert f'name="{name}"' in text
    assert 'name="llmperf.verdict" value="NO_BASELINE"' in text
    assert 'name="llmperf.slo.error_rate.status" value="ok"' in text


def test_results_cross_from_xdist_workers(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(USER_TEST)
    out = pytester.path / "r.json"
    result = pytester.runpytest("-n", "2", f"--llmperf-endpoint={sim_url}", f"--llmperf-json={out}")
    result.assert_outcomes(passed=2)
    assert len(json.loads(out.read_text())["results"]) == 2


def test_help_lists_the_options(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--llmperf-endpoint=URL*", "*--llmperf-model=NAME*", "*--llmperf-json=PATH*"])


def test_plugin_import_stays_cheap() -> None:
    code = (
        "import sys, pytest_llmperf.plugin; "
        "print(sorted(m for m in ('numpy', 'scipy', 'httpx', 'aiohttp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ctrl_c_stops_promptly_and_keeps_what_was_measured(
    tmp_path: Path,
    start_sim: type,
    spawn_pytest: Callable[..., subprocess.Popen[str]],
    wait_for_run: Callable[..., None],
) -> None:
    sim = start_sim("--decode-ms", "50", "--jitter", "0")
    (tmp_path / "test_long.py").write_text(
        "def test_long(llmperf):\n    llmperf.run(input_len=8, output_len=400, num_prompts=40, concurrency=4)\n"
    )
    out = tmp_path / "r.json"
    proc = spawn_pytest(f"--llmperf-endpoint={sim.url}", f"--llmperf-json={out}", "test_long.py", cwd=tmp_path)
    wait_for_run(proc, sim.url, running=4)
    time.sleep(0.5)  # a few 50 ms tokens into the run
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    output, _ = proc.communicate(timeout=30)
    assert time.monotonic() - started < 20, output  # the run itself would take minutes; slack for a loaded machine
    assert "interrupted; partial results kept" in output
    document = json.loads(out.read_text())
    (result,) = document["results"]
    assert result["summary"]["interrupted"] is True


def test_live_progress_on_request_and_quiet_otherwise(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(USER_TEST)
    shown = pytester.runpytest(f"--llmperf-endpoint={sim_url}", "--llmperf-progress=on")
    shown.assert_outcomes(passed=2)
    assert "test_latency: 12/12 requests" in shown.stdout.str()
    quiet = pytester.runpytest(f"--llmperf-endpoint={sim_url}")  # not a terminal: auto stays quiet
    quiet.assert_outcomes(passed=2)
    assert "requests ·" not in quiet.stdout.str()


def test_busy_poll_is_recorded_and_not_taken_for_a_client_bound_run(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(USER_TEST)
    out = pytester.path / "r.json"
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}", "--llmperf-busy-poll=on", f"--llmperf-json={out}")
    result.assert_outcomes(passed=2)
    for r in json.loads(out.read_text())["results"]:
        summary = r["summary"]
        assert summary["client_busy_poll"] is True
        assert not any("of a core" in reason for reason in summary["client_reasons"])
    bad = pytester.runpytest(f"--llmperf-endpoint={sim_url}", "--llmperf-busy-poll=yes")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--llmperf-busy-poll='yes': expected on or off*"])


def test_html_report_is_written(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(USER_TEST)
    report = pytester.path / "out" / "r.html"
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}", f"--llmperf-report={report}")
    result.assert_outcomes(passed=2)
    html = report.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "<svg" in html
    assert "test_latency" in html


@pytest.mark.parametrize("option", ["--llmperf-report", "--llmperf-json"])
def test_unwritable_output_path_fails_at_start_up(pytester: pytest.Pytester, option: str) -> None:
    pytester.makepyfile(USER_TEST)
    (pytester.path / "a-file").write_text("")
    result = pytester.runpytest("--llmperf-endpoint=http://127.0.0.1:9", f"{option}=a-file/r.out")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{option}='a-file/r.out': cannot write there*"])
    assert "collected" not in result.stdout.str()  # before collection, so before any load


def test_url_credentials_stay_out_of_assertion_messages_and_junit(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile("def test_shows_the_endpoint(llmperf):\n    assert llmperf.endpoint is None\n")
    junit = pytester.path / "j.xml"
    secret_url = sim_url.replace("http://", "http://user:pw-s3cret@")
    result = pytester.runpytest(f"--llmperf-endpoint={secret_url}", f"--junitxml={junit}")
    result.assert_outcomes(failed=1)
    assert f"Endpoint(url='{sim_url}'" in result.stdout.str()  # the repr is there, without the credentials
    for text in (result.stdout.str(), result.stderr.str(), junit.read_text()):
        assert "s3cret" not in text


def _slow_chat_server(delay_s: float) -> ThreadedApp:
    """An OpenAI-compatible server whose chat completions take ``delay_s`` and whose ``/tokenize`` ignores
    ``messages``, so the chat calibration has to probe with a real request."""
    release: list[asyncio.Event] = []

    def make_app() -> web.Application:
        release.append(asyncio.Event())

        async def models(request: web.Request) -> web.Response:
            return web.json_response({"object": "list", "data": [{"id": "m", "owned_by": "fake"}]})

        async def tokenize(request: web.Request) -> web.Response:
            body = await request.json()
            if "messages" in body:
                raise web.HTTPNotFound()
            words = str(body.get("prompt") or body.get("content") or "").split()
            return web.json_response({"tokens": list(range(100, 100 + len(words)))})

        async def chat(request: web.Request) -> web.Response:
            await request.read()
            # Released at exit: aiohttp keeps running a handler whose client has gone.
            await asyncio.wait_for(release[0].wait(), delay_s)
            return web.json_response({"error": "too late"}, status=503)

        app = web.Application()
        app.router.add_get("/v1/models", models)
        app.router.add_post("/tokenize", tokenize)
        app.router.add_post("/v1/chat/completions", chat)
        return app

    return ThreadedApp(make_app, before_exit=lambda: release[0].set())


def test_chat_calibration_waits_no_longer_than_the_workload_allows(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_chat(llmperf):
            llmperf.run(api="chat", input_len=8, output_len=2, num_prompts=2, request_timeout_s=1)
        """
    )
    with _slow_chat_server(delay_s=25) as url:
        started = time.monotonic()
        result = pytester.runpytest(f"--llmperf-endpoint={url}")
        elapsed = time.monotonic() - started
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*calibrating chat prompt lengths*POST http://127.0.0.1:*/v1/chat/completions did not answer within "
            "the workload's request_timeout_s=1 s*"
        ]
    )
    # The control plane's 30 s (before: 30 s, then silently on) is not waited for, nor the server's 25 s; the
    # rest is slack for a loaded machine.
    assert elapsed < 20


ONE_TEST = """
import pytest

@pytest.mark.perf(input_len=16, output_len=4, num_prompts=4, concurrency=2)
def test_one(llmperf):
    llmperf.run()
"""


@pytest.mark.parametrize("case", ["unreachable endpoint", "broken baseline", "server exits at start"])
def test_a_setup_or_baseline_error_is_printed_once(pytester: pytest.Pytester, sim_url: str, case: str) -> None:
    pytester.makepyfile(test_one=ONE_TEST)
    if case == "unreachable endpoint":
        args, message = ["--llmperf-endpoint=http://127.0.0.1:9", "--llmperf-ready-timeout=1"], "nothing listens"
    elif case == "broken baseline":
        path = pytester.path / "baselines" / "cpu-default" / "test_one.yaml"
        path.parent.mkdir(parents=True)
        path.write_text("schema_version: [\n")
        args, message = [f"--llmperf-endpoint={sim_url}", "--llmperf-hardware=cpu"], "not valid YAML"
    else:
        profiles = pytester.path / "profiles.yaml"
        profiles.write_text(
            "profiles:\n  crashing:\n    model: m\n"
            """    command: ["{python}", "-c", "print('engine ' + 'crashed'); raise SystemExit(3)", "{port}"]\n"""
        )  # the message is split in the command line, so only the log tail holds it whole
        args, message = ["--llmperf-server=crashing", f"--llmperf-profiles={profiles}"], "engine crashed"
    result = pytester.runpytest(*args)
    result.assert_outcomes(**({"failed": 1} if case == "broken baseline" else {"errors": 1}))
    output = result.stdout.str()
    assert "During handling of the above exception" not in output
    # The report, not pytest's one-line summary (which repeats it in full where CI is set, as on CI machines).
    report = output.split("short test summary info")[0]
    assert report.count(message) == 1, output


def test_a_workload_too_large_for_the_machine_fails_before_any_load(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(
        """
        def test_huge_run(llmperf):
            llmperf.run(num_prompts=10**7, input_len=100_000, concurrency=4)
        """
    )
    started = time.monotonic()
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}")
    assert time.monotonic() - started < 30  # building the prompts alone would take hours
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*workload too large for this machine: num_prompts=10000000 with input_len=100000*would hold about *"
            "more than 50% of the * available: lower num_prompts, or bound the run by time with duration_s*"
        ]
    )


def test_a_concurrency_above_the_open_file_limit_fails_before_any_load(pytester: pytest.Pytester, sim_url: str) -> None:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no open-file limit to exceed")
    pytester.makepyfile(
        f"""
        def test_huge_concurrency(llmperf):
            llmperf.run(num_prompts={soft + 1}, concurrency={soft + 1}, input_len=1, output_len=1)
        """
    )
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*workload too large for this machine: concurrency={soft + 1} keeps {soft + 1} requests in flight, one "
            "socket each, but this process can open only * more files (ulimit -n is *)*ulimit -n 65536*"
        ]
    )


def test_summary_says_where_the_reports_went_and_how_to_record_baselines(
    pytester: pytest.Pytester, sim_url: str
) -> None:
    pytester.makepyfile(USER_TEST)
    result = pytester.runpytest(
        f"--llmperf-endpoint={sim_url}", "--llmperf-json=out/r.json", "--llmperf-report=out/r.html"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*llmperf results*",
            "2 tests have no baseline for pair *: record with --llmperf-update, then review and commit it",
            f"*llmperf JSON results written to {pytester.path / 'out' / 'r.json'} *",
            f"*llmperf HTML report written to {pytester.path / 'out' / 'r.html'} *",
        ]
    )
