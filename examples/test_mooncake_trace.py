"""Replay of a Mooncake trace (FAST'25, ``conversation_trace.jsonl``): arrivals, lengths and shared prefix blocks.

Publication: Mooncake's released traces, one request a line (``timestamp`` in ms, ``input_length``,
``output_length``, ``hash_ids`` naming 512-token prefix blocks), replayed open loop at their timestamps, sped up
to load the cluster; the prefix cache is meant to serve the blocks that requests share. No network here: the
conftest writes a 32-request trace in that format (8 conversations whose turns repeat the earlier turns'
blocks), lengths shrunk 20× and blocks 16× (32 tokens), replayed 4× as fast (1.6 s). On a GPU server give
the real trace, ``trace_block_size=512`` and the speed-up you want. ``--llmperf-scale`` does not shrink a trace.
"""

from __future__ import annotations

import pytest

TRACE = ".llmperf/examples/mooncake_conversation_sample.jsonl"  # written by conftest.py


@pytest.mark.perf(trace=TRACE, trace_speedup=4.0, trace_block_size=32)
def test_mooncake_conversation_replay(llmperf):
    result = llmperf.run()
    assert result.failed == 0
    assert result.summary["completed"] == 32
