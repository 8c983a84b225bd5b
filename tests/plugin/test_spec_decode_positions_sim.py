"""Per-position speculative-decoding acceptance end to end: the simulator's ``/metrics`` counters, scraped around a
run, give ``spec_decode_per_position_acceptance_rates`` in the run's summary, consistent with its other keys."""

from __future__ import annotations

import json
from typing import Any

import pytest


def test_a_drafting_server_gives_per_position_rates(pytester: pytest.Pytester, start_sim: Any) -> None:
    # Up to 3 drafts a step, each accepted with probability 0.6 (a step's a accepted drafts are positions 0 … a-1).
    sim = start_sim("--decode-ms", "1", "--jitter", "0", "--tokens-per-chunk", "4", "--accept-rate", "0.6")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.perf(input_len=16, output_len=64, num_prompts=8, concurrency=4)
        def test_mtp(llmperf):
            llmperf.run()
        """
    )
    out = pytester.path / "r.json"
    pytester.runpytest(f"--llmperf-endpoint={sim.url}", f"--llmperf-json={out}").assert_outcomes(passed=1)
    (result,) = json.loads(out.read_text())["results"]
    summary = result["summary"]
    rates = summary["spec_decode_per_position_acceptance_rates"]
    assert len(rates) == 3
    assert 1 >= rates[0] >= rates[1] >= rates[2] > 0
    # Accepted tokens are the sum over positions: the acceptance length is 1 + the sum of the rates.
    assert summary["spec_decode_acceptance_length"] == pytest.approx(1 + sum(rates))
    assert summary["spec_decode_num_drafts"] * 3 == summary["spec_decode_draft_tokens"]
    counters = summary["server_metrics"]["counters"]
    assert 'sim:spec_decode_num_accepted_tokens_per_pos_total{position="0"}' in counters
