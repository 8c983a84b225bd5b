"""A/B mode as engine developers use it: ``--llmperf-compare`` with two simulators, judged B vs A."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

# Sims with 5 ms decode steps: one run of 12 requests × 24 tokens takes about half a second.
SIM_FLAGS = ("--decode-ms", "5", "--decode-ms-per-seq", "0", "--jitter", "0.01")

# A TTFT of about 12 ms on a shared machine moves by several percent between runs even when nothing changed,
# so it gets a tolerance to match (δ ≈ 2.5 × noise, as the README says); the other metrics keep 5 %.
AB_TEST = """
import pytest

@pytest.mark.perf(input_len=16, output_len=24, num_prompts=12, concurrency=4, repeats=8, tpot_p50_ms=60000,
                  tolerance={"ttft_p50": 0.15})
def test_decode(llmperf):
    result = llmperf.run()
    assert len(result.ab_runs) >= 2
    assert len(result.runs) == len(result.ab_runs)
"""


def run_ab(pytester: pytest.Pytester, a: str, b: str, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    out = pytester.path / "r.json"
    result = pytester.runpytest(
        f"--llmperf-endpoint={a}",
        f"--llmperf-compare={b}",
        "--llmperf-compare-pause=0.05",
        f"--llmperf-json={out}",
        "--junitxml=j.xml",
        *args,
    )
    return result, json.loads(out.read_text()) if out.exists() else {}


def junit_properties(pytester: pytest.Pytester) -> dict[str, str]:
    root = ET.parse(pytester.path / "j.xml").getroot()
    return {p.get("name", ""): p.get("value", "") for p in root.iter("property")}


def windows(runs: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return [(r["started_at_unix"], r["ended_at_unix"]) for r in runs]


def test_identical_servers_pass_with_interleaved_blocks(pytester: pytest.Pytester, start_sim: Any) -> None:
    a, b = start_sim(*SIM_FLAGS).url, start_sim(*SIM_FLAGS).url
    pytester.makepyfile(test_decode=AB_TEST)
    report = pytester.path / "report.html"
    result, document = run_ab(pytester, a, b, f"--llmperf-report={report}")
    result.assert_outcomes(passed=1)
    (r,) = document["results"]
    # Identical servers: never a regression (whether PASS is reached within the budget depends on the machine).
    assert r["verdict"]["status"] != "REGRESSION"
    assert r["verdict"]["reference"] == "A"
    ab = r["ab"]
    assert ab["a"]["url"] == a
    assert ab["b"]["url"] == b
    assert document["compare"]["url"] == b
    blocks = len(ab["blocks"])
    assert 2 <= blocks <= 8
    assert ab["blocks"] == ["AB", "BA", "AB", "BA", "AB", "BA", "AB", "BA"][:blocks]
    assert len(ab["runs_a"]) == len(ab["runs_b"]) == blocks
    # Runs follow the block order and never overlap: each starts after the previous one ended (the pause rule).
    sequence = []
    runs = {"A": iter(windows(ab["runs_a"])), "B": iter(windows(ab["runs_b"]))}
    for order in ab["blocks"]:
        sequence.extend(next(runs[server]) for server in order)
    for (_, end), (start, _) in itertools.pairwise(sequence):
        assert end < start
    # The pause rule: B was idle before each A run and vice versa; the settle time only where the server switched.
    for runs_key in ("runs_a", "runs_b"):
        assert all(r["ab_idle_wait_s"] is not None for r in ab[runs_key])
    switches = sum(1 for x, y in itertools.pairwise("".join(ab["blocks"])) if x != y)
    paused = sum(1 for k in ("runs_a", "runs_b") for r in ab[k] if r["ab_pause_s"] > 0)
    assert paused == switches
    # Reports: terminal section, JUnit properties, HTML section.
    result.stdout.fnmatch_lines(["*B vs A (ratios B/A*", f"A: *{a}*", f"B: *{b}*", "*test_decode*"])
    props = junit_properties(pytester)
    assert props["llmperf.ab.verdict"] == r["verdict"]["status"]
    assert props["llmperf.ab.blocks"] == str(blocks)
    assert 0.9 < float(props["llmperf.ab.tpot_p50.ratio"]) < 1.1
    html = report.read_text()
    assert '<h2 id="ab">B vs A</h2>' in html
    assert "B (compared)" in html


def test_slower_b_is_a_regression(pytester: pytest.Pytester, start_sim: Any) -> None:
    a = start_sim(*SIM_FLAGS).url
    # +30 % per token against a 5 % tolerance: decided within the budget however busy the machine is (the
    # +5 % case of the issue, at a tighter tolerance, is measured by benchmarks/validate_ab.py).
    b = start_sim(*SIM_FLAGS, "--slowdown-per-token-pct", "30").url
    pytester.makepyfile(test_decode=AB_TEST)
    result, document = run_ab(pytester, a, b, "--llmperf-compare-order=random")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*performance regression*", "*B vs A verdict: REGRESSION*", "*metric*A*B*B/A [[]90% CI[]]*tolerance*"]
    )
    (r,) = document["results"]
    assert r["ab"]["order"] == "random"
    assert set(r["ab"]["blocks"]) <= {"AB", "BA"}
    metrics = {m["name"]: m for m in r["verdict"]["metrics"]}
    # The decode-bound metrics carry the injected 30 %; whichever is significant first decides.
    assert {"REGRESSION"} & {metrics[n]["status"] for n in ("tpot_p50", "e2e_p50", "output_tok_s")}
    assert 1.2 < metrics["tpot_p50"]["estimate"] < 1.4
    # Not "TTFT unchanged": the simulator's first token ends a step scaled like every other (about 1.3x here,
    # idle or not), and only a busy machine, needing more blocks to decide, makes that significant too.
    assert metrics["ttft_p50"]["estimate"] > 1
    props = junit_properties(pytester)
    assert props["llmperf.ab.verdict"] == "REGRESSION"
    assert "B vs A verdict: REGRESSION" in (pytester.path / "j.xml").read_text()


def test_update_cannot_be_combined_with_compare(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_decode=AB_TEST)
    result = pytester.runpytest("--llmperf-compare=sim", "--llmperf-update")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llmperf-update cannot be combined with --llmperf-compare*"])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--llmperf-compare-order=sideways", "*--llmperf-compare-order='sideways': expected one of abba, random*"),
        ("--llmperf-compare-pause=-1", "*--llmperf-compare-pause='-1': expected seconds between 0 and 600*"),
    ],
)
def test_bad_ab_options_are_usage_errors(pytester: pytest.Pytester, option: str, message: str) -> None:
    result = pytester.runpytest("--llmperf-compare=sim", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_unreachable_b_fails_with_what_to_check(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(test_decode=AB_TEST)
    result = pytester.runpytest(
        f"--llmperf-endpoint={sim_url}", "--llmperf-compare=http://127.0.0.1:9", "--llmperf-ready-timeout=1"
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--llmperf-compare=http://127.0.0.1:9:*127.0.0.1:9*"])


def test_unknown_compare_profile_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_decode=AB_TEST)
    result = pytester.runpytest("--llmperf-server=sim", "--llmperf-compare=nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # before any server starts
    result.stderr.fnmatch_lines(["*--llmperf-compare=nope:*nope*sim*"])


def test_b_serving_another_model_is_refused(pytester: pytest.Pytester, start_sim: Any) -> None:
    a, b = start_sim(*SIM_FLAGS).url, start_sim(*SIM_FLAGS, "--model", "other-model").url
    pytester.makepyfile(test_decode=AB_TEST)
    result, _ = run_ab(pytester, a, b)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*A serves model 'llmperf-sim' and B serves 'other-model'*--llmperf-model=NAME*"])


def test_credentials_in_the_compare_url_stay_out_of_every_report(
    pytester: pytest.Pytester, start_sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = start_sim(*SIM_FLAGS).url, start_sim(*SIM_FLAGS).url
    monkeypatch.setenv("LLMPERF_API_KEY", "sk-a-secret")
    monkeypatch.delenv("B_KEY", raising=False)  # B authenticates with its URL's credentials, not A's key
    secret_b = b.replace("http://", "http://user:pw-secret@")
    pytester.makepyfile(test_decode=AB_TEST.replace("repeats=8", "repeats=2"))
    report = pytester.path / "report.html"
    result, document = run_ab(
        pytester, a, secret_b, "--llmperf-compare-api-key-env=B_KEY", f"--llmperf-report={report}"
    )
    result.assert_outcomes(passed=1)
    assert document["compare"]["url"] == b
    written = [json.dumps(document), (pytester.path / "j.xml").read_text(), report.read_text()]
    written += [result.stdout.str(), result.stderr.str()]
    for text in written:
        assert "secret" not in text


def recording_profiles(tmp: Path, extra: str = "") -> Path:
    """Profiles ``ra`` and ``rb``: the simulator behind a wrapper that records each start (name, pid, devices)."""
    wrapper = tmp / "wrapper.py"
    wrapper.write_text(
        textwrap.dedent(
            f"""
            import os, sys
            with open({str(tmp / "starts.log")!r}, "a") as log:
                cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
                devices = os.environ.get("CUDA_VISIBLE_DEVICES", "-")
                log.write(f"{{sys.argv[1]}} {{os.getpid()}} {{devices}} {{cpus}}\\n")
            os.execv(sys.executable, [sys.executable, "-m", "pytest_llmperf.sim", *sys.argv[2:]])
            """
        )
    )
    body = "profiles:\n"
    for name in ("ra", "rb"):
        body += (
            f"  {name}:\n"
            f'    command: ["{{python}}", "{wrapper}", "{name}", "--host", "{{host}}", "--port", "{{port}}",'
            ' "--decode-ms", "2"]\n'
            "    model: llmperf-sim\n"
            "    engine: sim\n"
            f"    {extra}\n"
        )
    target = tmp / "profiles.yaml"
    target.write_text(body)
    return target


def starts(tmp: Path) -> list[tuple[str, int, str]]:
    lines = (tmp / "starts.log").read_text().split("\n")
    return [(name, int(pid), devices) for name, pid, devices, _ in (line.split() for line in lines if line)]


def affinities(tmp: Path) -> dict[str, str]:
    lines = (tmp / "starts.log").read_text().split("\n")
    return {name: cpus for name, _, _, cpus in (line.split() for line in lines if line)}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# Mechanics only (which servers start, where, and that they stop): with two workers measuring at once, four
# simulators and two load generators share two cores, and B can be really slower than A for a whole test. A verdict
# is a measurement here, so a REGRESSION is an allowed outcome; an error or any other failure is not.
XDIST_TEST = """
import pytest

@pytest.mark.perf(input_len=8, output_len=16, num_prompts=4, concurrency=2, repeats=2, tolerance=0.5)
@pytest.mark.parametrize("n", range(3))
def test_each(llmperf, n):
    llmperf.run()
"""


def assert_all_measured(result: pytest.RunResult, tests: int = 3) -> None:
    """Every test ran its A/B blocks to a verdict; a failure may only be that verdict (a measured REGRESSION)."""
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == tests, outcomes
    assert "errors" not in outcomes, outcomes
    regressions = result.stdout.lines.count("performance regression:")
    assert regressions == outcomes.get("failed", 0), result.stdout.str()[-3000:]


def test_spawned_pair_under_xdist_shares_and_stops_both(pytester: pytest.Pytester) -> None:
    profiles = recording_profiles(pytester.path)
    pytester.makepyfile(XDIST_TEST)
    out = pytester.path / "r.json"
    result = pytester.runpytest(
        "-n",
        "2",
        "--llmperf-server=ra",
        "--llmperf-compare=rb",
        "--llmperf-compare-pause=0",
        f"--llmperf-profiles={profiles}",
        f"--llmperf-json={out}",
    )
    assert_all_measured(result)
    recorded = starts(pytester.path)
    assert sorted(name for name, _, _ in recorded) == ["ra", "rb"]  # one A and one B for both workers
    assert not any(alive(pid) for _, pid, _ in recorded)  # the controller stopped both
    results = json.loads(out.read_text())["results"]
    every_run = sorted(w for r in results for key in ("runs_a", "runs_b") for w in windows(r["ab"][key]))
    assert len(every_run) == 3 * 2 * 2
    for (_, end), (start, _) in itertools.pairwise(every_run):
        assert end <= start  # no two measurements overlapped, across workers and servers


def test_gpu_profiles_get_disjoint_devices_for_a_and_b(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    profiles = recording_profiles(pytester.path, extra="gpus_per_server: 1")
    pytester.makepyfile(XDIST_TEST)
    result = pytester.runpytest(
        "-n",
        "2",
        "--llmperf-server=ra",
        "--llmperf-compare=rb",
        "--llmperf-compare-pause=0",
        f"--llmperf-profiles={profiles}",
    )
    assert_all_measured(result)
    recorded = starts(pytester.path)
    # Each worker owns an A and a B; no device is used twice.
    assert sorted(devices for _, _, devices in recorded) == ["0", "1", "2", "3"]
    by_name = {name: sorted(d for n, _, d in recorded if n == name) for name in ("ra", "rb")}
    assert by_name == {"ra": ["0", "2"], "rb": ["1", "3"]}
    assert not any(alive(pid) for _, pid, _ in recorded)


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2 or shutil.which("taskset") is None, reason="needs two cores and taskset"
)
def test_spawned_a_and_b_are_pinned_alike(pytester: pytest.Pytester) -> None:
    """Both servers get the same core(s) from ``cpu_affinity: auto``: B must not lose its pinning because the
    client already moved off A's core (B would then run unpinned beside the client: not a fair comparison)."""
    profiles = recording_profiles(pytester.path, extra="cpu_affinity: auto")
    pytester.makepyfile(XDIST_TEST)
    result = pytester.runpytest(
        "--llmperf-server=ra", "--llmperf-compare=rb", "--llmperf-compare-pause=0", f"--llmperf-profiles={profiles}"
    )
    assert_all_measured(result)
    pinned = affinities(pytester.path)
    last = str(sorted(os.sched_getaffinity(0))[-1])
    assert pinned == {"ra": last, "rb": last}


@pytest.mark.usefixtures("llamacpp")
def test_two_embedded_engines_compare(pytester: pytest.Pytester) -> None:
    """A/B on the real engine: two llama-servers, interleaved, both idle-checked through llama.cpp's gauges."""
    pytester.makepyfile(
        """
        import pytest

        # Mechanics only: a CPU engine beside another xdist worker is too noisy for a 5 % tolerance.
        @pytest.mark.perf(input_len=64, output_len=32, num_prompts=8, concurrency=4, repeats=3, tolerance=0.5)
        def test_small(llmperf):
            llmperf.run()
        """
    )
    out = pytester.path / "r.json"
    result = pytester.runpytest(
        "--llmperf-compare=llamacpp-tiny", "--llmperf-compare-pause=0.2", f"--llmperf-json={out}"
    )
    result.assert_outcomes(passed=1)
    (r,) = json.loads(out.read_text())["results"]
    assert r["ab"]["a"]["engine"] == r["ab"]["b"]["engine"] == "llama.cpp"
    assert r["ab"]["a"]["url"] != r["ab"]["b"]["url"]
    assert r["ab"]["a"]["pid"] != r["ab"]["b"]["pid"]
    assert 2 <= len(r["ab"]["blocks"]) <= 3
    for run in r["ab"]["runs_a"] + r["ab"]["runs_b"]:
        assert run["failed"] == 0
        assert run["ab_idle_wait_s"] is not None  # llama.cpp's requests_processing gauge was read
    assert r["verdict"]["reference"] == "A"
    assert not alive(r["ab"]["a"]["pid"])
    assert not alive(r["ab"]["b"]["pid"])


def test_url_credentials_and_an_api_key_together_are_refused_before_any_load(
    pytester: pytest.Pytester, sim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMPERF_API_KEY", "sk-a-secret")
    pytester.makepyfile(test_decode=AB_TEST)
    secret_b = sim_url.replace("http://", "http://user:pw-secret@")
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}", f"--llmperf-compare={secret_b}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*carries a user name and password and an API key is set as well*"])
    assert "secret" not in result.stdout.str()
