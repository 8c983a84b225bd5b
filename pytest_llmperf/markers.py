"""The ``perf`` marker: parsed once per test into workload keyword arguments.

Markers on the module, class and function merge with the closest one winning; ``llmperf.run(**overrides)``
wins over all of them. An unknown or ill-typed kwarg fails that test (never the session) with the list of
valid names and the closest match.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from pytest_llmperf.errors import SpecError
from pytest_llmperf.spec import Workload

WORKLOAD_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Workload))

MARKER_HELP = (
    "perf(*, " + ", ".join(f"{name}=..." for name in WORKLOAD_FIELDS) + "): an LLM-serving performance test. "
    "The kwargs declare the workload that the llmperf fixture's run() sends; see the pytest-llmperf README."
)


def merge(kwargs_closest_first: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge marker kwargs so that the closest marker wins."""
    merged: dict[str, Any] = {}
    for kwargs in reversed(list(kwargs_closest_first)):
        merged.update(kwargs)
    return merged


def check_names(kwargs: Mapping[str, Any], where: str) -> None:
    for name in kwargs:
        if name not in WORKLOAD_FIELDS:
            close = difflib.get_close_matches(name, WORKLOAD_FIELDS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"{where}: unknown argument {name!r}.{hint} Valid names: {', '.join(WORKLOAD_FIELDS)}")


def build_workload(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> Workload:
    """A validated :class:`Workload` from marker kwargs and run() overrides."""
    check_names(base, "@pytest.mark.perf")
    check_names(overrides, "llmperf.run()")
    kwargs = {**base, **overrides}
    try:
        return Workload(**kwargs)
    except TypeError as exc:
        raise SpecError(f"invalid workload arguments: {exc}") from exc
