"""Multi-turn conversations through the plugin against the simulator (issue 16, item 7): the keywords on the marker
and on ``llmperf.run()``, per-turn TTFT in the JSON document, the terminal table and JUnit, and prefix-cache hits
that count (sharing is what a conversation asks for)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

PERF_TEST = """
import pytest

pytestmark = pytest.mark.perf(api="chat", input_len=48, output_len=4, turns=3, concurrency=2, repeats=1)


@pytest.mark.perf(num_prompts=4)
def test_conversations(llmperf):
    result = llmperf.run(turn_gap_s=0.01)
    assert result.failed == 0
    assert len(result.run.records) == 12  # 4 conversations of 3 turns
    assert sorted({(r.conversation, r.turn) for r in result.run.records}) == [
        (c, t) for c in range(4) for t in (1, 2, 3)
    ]
    assert result.validity["input_len_mismatch"] == 0
    assert set(result.ttft_by_turn) == {"1", "2", "3"}
"""


def test_conversations_report_ttft_by_turn_and_their_cache_hits_count(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(test_chat=PERF_TEST)
    out, xml = pytester.path / "r.json", pytester.path / "junit.xml"
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}", f"--llmperf-json={out}", f"--junitxml={xml}")
    result.assert_outcomes(passed=1)
    entry = json.loads(out.read_text())["results"][0]
    summary = entry["summary"]
    assert entry["workload"]["turns"] == 3
    assert entry["workload"]["turn_gap_s"] == 0.01
    assert summary["conversations"] == 4
    by_turn = summary["ttft_by_turn"]
    assert [by_turn[t]["requests"] for t in ("1", "2", "3")] == [4, 4, 4]
    # Each turn carries the earlier ones: the prompt grows, and the cache serves what the turn before sent.
    assert by_turn["1"]["input_len_mean"] < by_turn["2"]["input_len_mean"] < by_turn["3"]["input_len_mean"]
    assert by_turn["1"]["cached_fraction"] < 0.05 < by_turn["2"]["cached_fraction"] < by_turn["3"]["cached_fraction"]
    assert summary["prefix_sharing"] is True
    assert summary["cached_prompt_fraction"] > 0.05
    assert summary["invalid_reasons"] == []
    assert summary["median_ttft_turn1_ms"] is not None
    assert summary["median_ttft_later_turns_ms"] is not None
    # The table's lengths are the requests' mean, not input_len/output_len; the note gives TTFT by turn.
    mean_in = summary["dataset_lens"]["input_len_mean"]
    result.stdout.fnmatch_lines(
        [
            f"*::test_conversations * 3t~{mean_in:.0f}/4 c2 *NO_BASELINE",
            "*multi-turn: 4 conversations; TTFT50 by turn 1:*",
        ]
    )
    names = {p.get("name") for p in ET.parse(xml).getroot().iter("property")}
    assert {"llmperf.ttft_ms.turn1.p50", "llmperf.ttft_ms.turn3.p99", "llmperf.cached_prompt_fraction.turn2"} <= names


def test_a_misspelt_turn_keyword_fails_that_test_with_the_right_name(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.perf(turn=3)
        def test_typo(llmperf):
            llmperf.run()
        """
    )
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*unknown argument 'turn'. Did you mean 'turns'?*"])
