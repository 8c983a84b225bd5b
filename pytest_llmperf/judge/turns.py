"""Per-turn figures of a multi-turn run: TTFT by user turn, and how much of each turn's prompt was cached.

Pure. In a multi-turn run (``Workload.turns``) turn ``k`` of a conversation carries turns ``1..k-1``, so its
prompt grows with ``k`` while a prefix cache can serve what it shares with the turn before: the run's pooled
TTFT mixes first turns (a whole prefill) with later ones (a prefill of the new turn, when the cache served the
rest). These figures keep them apart, over successful requests as the pooled ones are, with the same numpy
statistics (linear percentiles, in ms):

- ``ttft_by_turn``: per turn number (a string key, for JSON), the successful ``requests``, ``mean_ms``,
  ``median_ms``, ``p90_ms``, ``p99_ms`` of TTFT, ``input_len_mean`` (the server's prompt count when reported,
  else the request's) and ``cached_fraction``: cached prompt tokens over prompt tokens, from the responses'
  ``usage.prompt_tokens_details.cached_tokens``, ``None`` unless every request of that turn reported it;
- ``<stat>_ttft_turn1_ms`` and ``<stat>_ttft_later_turns_ms``: the usual statistics (mean, median, std and the
  summary's percentiles) of first turns and of all later ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from pytest_llmperf.results import TurnFigures
from pytest_llmperf.spec import RequestRecord

__all__ = ["by_turn", "is_multi_turn"]


def is_multi_turn(records: Sequence[RequestRecord]) -> bool:
    """Whether the records come from conversations (then the summary gets the per-turn figures)."""
    return any(r.conversation is not None for r in records)


def by_turn(ok: Sequence[tuple[RequestRecord, float, int]]) -> dict[str, TurnFigures]:
    """``ttft_by_turn`` of the successful requests, given as (record, TTFT in seconds, input tokens)."""
    groups: dict[int, list[tuple[RequestRecord, float, int]]] = defaultdict(list)
    for item in ok:
        groups[item[0].turn].append(item)
    out: dict[str, TurnFigures] = {}
    for turn in sorted(groups):
        items = groups[turn]
        ttfts = np.array([t for _, t, _ in items], dtype=np.float64)
        cached = [r.cached_tokens for r, _, _ in items]
        prompts = sum(n for _, _, n in items)
        known = all(c is not None for c in cached) and prompts > 0
        out[str(turn)] = {
            "requests": len(items),
            "mean_ms": float(np.mean(ttfts) * 1000),
            "median_ms": float(np.median(ttfts) * 1000),
            "p90_ms": float(np.percentile(ttfts, 90, method="linear") * 1000),
            "p99_ms": float(np.percentile(ttfts, 99, method="linear") * 1000),
            "input_len_mean": prompts / len(items),
            "cached_fraction": sum(c or 0 for c in cached) / prompts if known else None,
        }
    return out
