"""The words a verdict and a test's outcome are reported with, as plain strings.

A module of its own, of constants only, because the plugin's hooks and fixtures need the words when pytest
starts and the typed documents of :mod:`pytest_llmperf.results` are only for type checkers there.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

Status: TypeAlias = Literal["REGRESSION", "PASS", "INCONCLUSIVE", "IMPROVEMENT"]  # of one metric
OverallStatus: TypeAlias = Literal["REGRESSION", "PASS", "INCONCLUSIVE", "IMPROVEMENT", "NO_BASELINE", "NOT_COMPARABLE"]
Reference: TypeAlias = Literal["baseline", "A"]  # what a verdict compares with: stored runs, or A/B mode's server A

# Plain strings, not an Enum: they travel in JSON and through execnet, and appear in f-strings, as the words.
# Defined here rather than in judge.verdict (which re-exports them) so that the reports, imported when the
# plugin loads, need not import scipy to name them.
REGRESSION: Final = "REGRESSION"
PASS: Final = "PASS"
INCONCLUSIVE: Final = "INCONCLUSIVE"
IMPROVEMENT: Final = "IMPROVEMENT"
NO_BASELINE: Final = "NO_BASELINE"
NOT_COMPARABLE: Final = "NOT_COMPARABLE"
# A test's word in the reports when something outranks its verdict: a gating SLO failed (BREACH) or an advisory
# one did (MISSED); the test failed or was interrupted.
SLO_BREACH: Final = "SLO BREACH"
SLO_MISSED: Final = "SLO MISSED"
FAILED: Final = "FAILED"
INTERRUPTED: Final = "INTERRUPTED"
