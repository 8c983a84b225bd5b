"""Injectable faults: what can go wrong with one request, and which requests it hits.

Syntax (CLI ``--fault``, and the strings in ``POST /sim/config {"faults": [...]}``)::

    KIND:every=N[,after=N][,seconds=S]     deterministic: requests N, 2N, 3N, ...
    KIND:rate=P[,after=N][,seconds=S]      each request with probability P (seeded by --seed)

Requests are numbered 1, 2, ... from the moment the fault list was last set (start-up or ``/sim/config``),
counting every generation request that passed validation. When several faults select the same request, the
first one listed wins.

Kinds:

- ``http_500`` / ``http_503`` / ``http_429``: that status with a JSON error body (429 adds ``Retry-After``).
- ``disconnect``: 200 and a stream that is closed after ``after`` output chunks (default 0), no ``[DONE]``.
- ``malformed``: one ``data:`` line of invalid JSON inserted before output chunk number ``after`` (0-based);
  the stream otherwise completes normally.
- ``empty``: 200 with only ``data: [DONE]`` (no output chunk).
- ``truncated``: every output chunk, then the connection closes without the usage chunk and ``[DONE]``.
- ``hang``: after ``after`` output chunks nothing more is sent for ``seconds`` (default 600) or until the
  client goes away; then the connection is closed.

A stream with fewer chunks than ``after`` ends normally.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from pytest_llmperf.errors import SpecError

HTTP_FAULTS: dict[str, int] = {"http_500": 500, "http_503": 503, "http_429": 429}
FAULT_KINDS: tuple[str, ...] = (*HTTP_FAULTS, "disconnect", "malformed", "empty", "truncated", "hang")
_TAKES_AFTER = frozenset({"disconnect", "malformed", "hang"})
_SYNTAX = (
    "expected KIND:every=N or KIND:rate=P, plus after=N (disconnect, malformed, hang) and seconds=S (hang); "
    f"KIND is one of {', '.join(FAULT_KINDS)}"
)


@dataclass(frozen=True, kw_only=True, slots=True)
class FaultSpec:
    """One fault and its selector: exactly one of ``every`` and ``rate`` is set."""

    kind: str
    every: int | None = None
    rate: float | None = None
    after: int = 0
    seconds: float = 600.0

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise SpecError(f"invalid fault {self!r}: {problem}; {_SYNTAX}")

    def __str__(self) -> str:
        parts = [f"every={self.every}" if self.every is not None else f"rate={self.rate:g}"]
        if self.kind in _TAKES_AFTER:
            parts.append(f"after={self.after}")
        if self.kind == "hang":
            parts.append(f"seconds={self.seconds:g}")
        return f"{self.kind}:{','.join(parts)}"

    def selects(self, number: int, *, seed: int, index: int) -> bool:
        """Whether request ``number`` (1-based) gets this fault; ``index`` is the fault's place in the list."""
        if self.every is not None:
            return number % self.every == 0
        assert self.rate is not None
        # A string seed is hashed deterministically, so a run is reproducible whatever the hash seed.
        return random.Random(f"{seed}:fault:{index}:{number}").random() < self.rate


def _problem(f: FaultSpec) -> str:
    if f.kind not in FAULT_KINDS:
        return f"unknown kind {f.kind!r}"
    if (f.every is None) == (f.rate is None):
        return "set exactly one of every=N and rate=P"
    if f.every is not None and (isinstance(f.every, bool) or not isinstance(f.every, int) or f.every < 1):
        return f"every={f.every!r} must be an int >= 1"
    if f.rate is not None and not 0.0 <= f.rate <= 1.0:
        return f"rate={f.rate!r} must be in [0, 1]"
    if isinstance(f.after, bool) or not isinstance(f.after, int) or f.after < 0:
        return f"after={f.after!r} must be an int >= 0"
    if not (math.isfinite(f.seconds) and f.seconds > 0):
        return f"seconds={f.seconds!r} must be a number > 0"
    return ""


def parse_fault(text: str) -> FaultSpec:
    """Parse ``KIND:key=value,...``; raise :class:`SpecError` naming the problem and the syntax."""
    kind, sep, rest = text.strip().partition(":")
    if not sep or not rest:
        raise SpecError(f"invalid fault {text!r}: no selector; {_SYNTAX}")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        key, eq, value = item.strip().partition("=")
        if not eq or key in fields:
            raise SpecError(f"invalid fault {text!r}: bad or repeated item {item!r}; {_SYNTAX}")
        fields[key] = value
    allowed = {"every", "rate"} | ({"after"} if kind in _TAKES_AFTER else set())
    allowed |= {"seconds"} if kind == "hang" else set()
    unknown = sorted(set(fields) - allowed)
    if kind in FAULT_KINDS and unknown:
        raise SpecError(f"invalid fault {text!r}: {kind} does not take {', '.join(unknown)}; {_SYNTAX}")
    try:
        return FaultSpec(
            kind=kind,
            every=int(fields["every"]) if "every" in fields else None,
            rate=float(fields["rate"]) if "rate" in fields else None,
            after=int(fields.get("after", "0")),
            seconds=float(fields.get("seconds", "600")),
        )
    except ValueError as exc:
        if isinstance(exc, SpecError):
            raise
        raise SpecError(f"invalid fault {text!r}: {exc}; {_SYNTAX}") from None


def pick_fault(faults: Sequence[FaultSpec], number: int, *, seed: int) -> FaultSpec | None:
    """The first fault that selects request ``number``, or ``None``."""
    for index, fault in enumerate(faults):
        if fault.selects(number, seed=seed, index=index):
            return fault
    return None
