"""Seeded validation of ``history changes`` (``pytest_llmperf.history.changes.find_changes``): where it finds a
known step, how often it finds a change in a flat series, and how fast it is.

Every series is simulated: a level of 100 with 2 % log-normal session-to-session noise, as a median TPOT in ms.

- **Tuning table**: the false-change rate (any change at all) on flat series of 200 and 1000 sessions, on flat
  series with heavy tails (Student t with 3 degrees of freedom, scaled to the same 2 % SD), and on 100 sessions
  whose last one is 5 noise SDs high (one loaded CI machine); beside them, how often a 5 % and a 3 % step after
  session 40 of 100 is found at 40 ± 2, both ends of a 5 % bump from session 40 to 60, and a 5 % step with only
  five sessions after it (at 95 of 100: how soon a nightly run sees it). Rows: Otava's own
  ``compute_change_points`` at its defaults on the log values, then ``find_changes`` with other ``max_pvalue``,
  ``min_sessions`` and ``window_len`` settings, and with its least-squares refinement switched off.
- **Detection** at the defaults: the distribution of the found index for a 5 % step after session 40, and
  the detection rate by step size.
- **False changes** at the defaults and at ``max_pvalue`` 1e-4 on flat series of 100 and 200 sessions
  (5 × ``--seeds`` each) and of 1000 sessions, with the 95 % Clopper–Pearson interval.
- **Speed**: one series of 10,000 sessions (flat, and with a step every 1000 sessions), and 100 and 1000
  series of 100 sessions (what ``history changes`` reads from a database of that size), best of 3.

Usage: ``python benchmarks/history_changes.py [--quick] [--seeds N] [--seed S] [--out PATH] [--check]``. The full
run (200 seeds) takes about two CPU-minutes and writes ``benchmarks/results/history_changes.md``; ``--quick`` is a
smoke run (10 seeds; its rates are too noisy to judge the targets).
"""

from __future__ import annotations

import datetime
import functools
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import numpy.typing as npt

# Run as a script, this directory is on sys.path already; the explicit entry also serves an import by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    git_commit,
    machine_line,
    make_parser,
    markdown_table,
    module_version,
    publish_report,
    targets_section,
)

from pytest_llmperf.history import changes
from pytest_llmperf.history.model import Change, Series, SeriesKey, SessionPoint
from pytest_llmperf.judge.stats import clopper_pearson

FloatArray = npt.NDArray[np.float64]
Detector = Callable[[FloatArray], list[int]]

NOISE = 0.02
LEVEL = 100.0
STEP_AT = 40
TOLERANCE = 2  # the target: the change found at 40 ± 2
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
KEY = SeriesKey("perf/test_serve.py::test_decode", "cpu-fp32", "0123456789abcdef", "median_tpot_ms")


def as_series(values: FloatArray) -> Series:
    """One session an hour from ``T0``."""
    points = tuple(
        SessionPoint(f"s{i}", T0 + datetime.timedelta(hours=i), float(v), 3, None, None, None, "e")
        for i, v in enumerate(values)
    )
    return Series(KEY, points)


# --- simulated series ------------------------------------------------------------------------------------------


def rng_for(seed: int, case: str, i: int) -> np.random.Generator:
    """The generator of replicate ``i`` of ``case``: the same data for every setting compared."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(sum(map(ord, case)), len(case), i)))


def flat(rng: np.random.Generator, n: int) -> FloatArray:
    return np.asarray(LEVEL * np.exp(rng.normal(0.0, NOISE, n)), dtype=np.float64)


def heavy_tails(rng: np.random.Generator, n: int) -> FloatArray:
    # t₃ has variance 3.
    return np.asarray(LEVEL * np.exp(NOISE * rng.standard_t(3, n) / math.sqrt(3.0)), dtype=np.float64)


def outlier_at_end(rng: np.random.Generator, n: int) -> FloatArray:
    values = flat(rng, n)
    values[-1] *= math.exp(5 * NOISE)
    return values


def step(size: float, at: int = STEP_AT, until: int | None = None) -> Callable[[np.random.Generator, int], FloatArray]:
    """Flat, with the level × (1 + size) from session ``at`` (up to ``until``)."""

    def make(rng: np.random.Generator, n: int) -> FloatArray:
        values = flat(rng, n)
        values[at:until] *= 1 + size
        return values

    return make


@dataclass(frozen=True)
class Case:
    name: str
    n: int
    make: Callable[[np.random.Generator, int], FloatArray]
    # Where the changes are: a hit is a change found within ± 2 of each. None: a flat case, a hit is any change.
    targets: tuple[int, ...] | None = None
    share: float = 1.0  # of --seeds (the long series are slower)


TUNING_CASES = [
    Case("flat 200", 200, flat),
    Case("flat 1000", 1000, flat, share=0.25),
    Case("t₃ tails 200", 200, heavy_tails),
    Case("last of 100 +5 SD", 100, outlier_at_end),
    Case("5 % step at 40", 100, step(0.05), (STEP_AT,)),
    Case("3 % step at 40", 100, step(0.03), (STEP_AT,)),
    Case("5 % from 40 to 60", 100, step(0.05, 40, 60), (40, 60)),
    Case("5 % step at 95", 100, step(0.05, 95), (95,)),
]


# --- detectors -------------------------------------------------------------------------------------------------


def otava_as_is(values: FloatArray) -> list[int]:
    """Otava's ``compute_change_points`` at its defaults on the log values (a list: see changes._detect)."""
    from otava.analysis import compute_change_points

    points, _weak = compute_change_points([math.log(v) for v in values])
    return [int(p.index) for p in points]


def ours(
    max_pvalue: float = changes.MAX_PVALUE,
    min_sessions: int = changes.MIN_SESSIONS,
    window_len: int = changes.WINDOW_LEN,
) -> Detector:
    def detect(values: FloatArray) -> list[int]:
        found = changes.find_changes(
            as_series(values), max_pvalue=max_pvalue, min_sessions=min_sessions, window_len=window_len
        )
        return [c.index for c in found]

    return detect


def _no_refinement(*args: object) -> None:
    return None


def unrefined(values: FloatArray) -> list[int]:
    """The defaults with the change points left where Otava's windows put them."""
    with mock.patch.object(changes, "_refine", _no_refinement):
        return ours()(values)


SETTINGS: list[tuple[str, Detector]] = [
    ("Otava `compute_change_points` as is (p 1e-3, window 50)", otava_as_is),
    ("p 1e-3, min_sessions 1", ours(max_pvalue=1e-3, min_sessions=1)),
    ("p 1e-3, min_sessions 3", ours(max_pvalue=1e-3)),
    ("p 1e-4, min_sessions 3", ours(max_pvalue=1e-4)),
    ("**p 1e-5, min_sessions 3 (defaults)**", ours()),
    ("p 1e-5, min_sessions 1", ours(min_sessions=1)),
    ("p 1e-5, min_sessions 5", ours(min_sessions=5)),
    ("p 1e-6, min_sessions 3", ours(max_pvalue=1e-6)),
    ("defaults, window 30", ours(window_len=30)),
    ("defaults, window 100", ours(window_len=100)),
    ("defaults without the refinement", unrefined),
]


def near(found: Sequence[int], target: int = STEP_AT) -> int | None:
    """The found index closest to ``target`` (None when nothing was found)."""
    return min(found, key=lambda i: abs(i - target)) if found else None


def score(detect: Detector, case: Case, seed: int, seeds: int) -> tuple[int, int]:
    """(hits, replicates): every change found within ± 2, or for a flat case any change at all."""
    reps = max(2, round(seeds * case.share))
    hits = 0
    for i in range(reps):
        found = detect(case.make(rng_for(seed, case.name, i), case.n))
        if case.targets is None:
            hits += bool(found)
        else:
            hits += all(any(abs(i - t) <= TOLERANCE for i in found) for t in case.targets)
    return hits, reps


def pct(hits: int, n: int) -> str:
    return f"{100 * hits / n:.1f} %"


# --- the studies -----------------------------------------------------------------------------------------------


def tuning(seed: int, seeds: int) -> tuple[list[str], dict[str, dict[str, float]]]:
    rows = []
    rates: dict[str, dict[str, float]] = {}
    for label, detect in SETTINGS:
        cells = [label]
        for case in TUNING_CASES:
            hits, n = score(detect, case, seed, seeds)
            rates.setdefault(label, {})[case.name] = hits / n
            cells.append(pct(hits, n))
        rows.append(cells)
        print(f"  tuning: {label} done", file=sys.stderr, flush=True)
    header = ["setting", *(f"{c.name} ({'any change' if c.targets is None else '± 2'})" for c in TUNING_CASES)]
    return [markdown_table(header, rows)], rates


def detection(seed: int, seeds: int) -> tuple[list[str], float]:
    detect = ours()
    offsets: Counter[str] = Counter()
    extra = 0
    within = 0
    for i in range(seeds):
        found = detect(step(0.05)(rng_for(seed, "detection", i), 100))
        best = near(found)
        if best is None:
            offsets["none"] += 1
            continue
        offset = best - STEP_AT
        offsets[f"{offset:+d}" if abs(offset) <= 5 else ("< −5" if offset < 0 else "> +5")] += 1
        within += abs(offset) <= TOLERANCE
        extra += len(found) - 1
    order = ["none", "< −5", *(f"{o:+d}" for o in range(-5, 6)), "> +5"]
    lines = [
        f"5 % step after session {STEP_AT} of 100, 2 % noise, {seeds} seeds: found at {STEP_AT} ± {TOLERANCE} in "
        f"{pct(within, seeds)}; {extra} further change(s) in all.",
        "",
        markdown_table(["found index − 40", *order], [["seeds", *(str(offsets.get(o, 0)) for o in order)]]),
        "",
        "By step size (100 sessions, step after session 40, 2 % noise; 'any' = at least one change anywhere):",
        "",
    ]
    rows = []
    for size in (0.01, 0.02, 0.03, 0.04, 0.05, 0.10):
        any_change = near_hits = 0
        for i in range(seeds):
            found = detect(step(size)(rng_for(seed, f"power {size}", i), 100))
            best = near(found)
            any_change += bool(found)
            near_hits += best is not None and abs(best - STEP_AT) <= TOLERANCE
        rows.append([f"{size:.0%}", f"{size / NOISE:.1f}", pct(near_hits, seeds), pct(any_change, seeds)])
    lines.append(markdown_table(["step", "noise SDs", "found at 40 ± 2", "any change"], rows))
    return lines, within / seeds


def false_changes(seed: int, seeds: int) -> tuple[list[str], float, float]:
    """At the defaults and at max_pvalue 1e-4, with more seeds than the tuning table: the rates are small."""
    rows = []
    rate_200 = hi_200 = math.nan
    for label, detect in (("p 1e-4", ours(max_pvalue=1e-4)), ("**defaults**", ours())):
        for n, reps in ((100, 5 * seeds), (200, 5 * seeds), (1000, seeds // 2)):
            reps = max(reps, 2)
            hits = sum(bool(detect(flat(rng_for(seed, f"flat defaults {n}", i), n))) for i in range(reps))
            lo, hi = clopper_pearson(hits, reps)
            rows.append([label, str(n), str(reps), str(hits), pct(hits, reps), f"{100 * lo:.2f}–{100 * hi:.2f} %"])
            if n == 200 and label == "**defaults**":
                rate_200, hi_200 = hits / reps, hi
    header = ["setting", "sessions", "series", "with a change", "rate", "95 % Clopper–Pearson"]
    return [markdown_table(header, rows)], rate_200, hi_200


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def find_all(batch: Sequence[Series]) -> list[list[Change]]:
    return [changes.find_changes(s) for s in batch]


def speed(seed: int, quick: bool) -> tuple[list[str], float]:
    rng = rng_for(seed, "speed", 0)
    long_flat = as_series(flat(rng, 10_000))
    stepped = flat(rng, 10_000)
    for k in range(1000, 10_000, 1000):
        stepped[k:] *= 1.05 if k % 2000 else 1 / 1.05
    long_steps = as_series(stepped)
    hundred = [as_series(flat(rng, 100)) for _ in range(100 if quick else 1000)]
    rows = []
    t_flat = best_of(lambda: changes.find_changes(long_flat))
    rows.append(["1 series × 10,000 sessions, flat", f"{t_flat:.3f}", str(len(changes.find_changes(long_flat)))])
    t_steps = best_of(lambda: changes.find_changes(long_steps))
    rows.append(["1 series × 10,000 sessions, 9 steps", f"{t_steps:.3f}", str(len(changes.find_changes(long_steps)))])
    for count in (100, 1000) if not quick else (100,):
        batch = hundred[:count]
        t = best_of(functools.partial(find_all, batch))
        found = sum(len(changes.find_changes(s)) for s in batch)
        rows.append([f"{count} series × 100 sessions, flat", f"{t:.3f}", str(found)])
    return [markdown_table(["input", "seconds (best of 3)", "changes found"], rows)], max(t_flat, t_steps)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run with 10 seeds (noisy figures)")
    parser.add_argument("--seeds", type=int, default=None, help="replicates per case (default 200; quick 10)")
    parser.add_argument("--seed", type=int, default=20260105)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "history_changes.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    seeds = args.seeds or (10 if args.quick else 200)
    command = " ".join(["python benchmarks/history_changes.py", *(sys.argv[1:] if argv is None else argv)])

    t0 = time.perf_counter()
    tuning_lines, _rates = tuning(args.seed, seeds)
    detection_lines, found_rate = detection(args.seed, seeds)
    false_lines, false_rate, false_hi = false_changes(args.seed, seeds)
    speed_lines, long_s = speed(args.seed, args.quick)
    elapsed = time.perf_counter() - t0

    mode = "QUICK smoke run: too few seeds to judge the targets" if args.quick else "full run"
    out = [
        "# `history changes` validation (seeded simulation)",
        "",
        f"Generated by `{command}` ({mode}), seed {args.seed}, {seeds} seeds per case, {elapsed:.0f} s,",
        f"{datetime.date.today().isoformat()}. Machine: {machine_line()}; commit {git_commit()};",
        f"apache-otava {module_version('apache-otava')}, numpy {np.__version__}.",
        "",
        f"Defaults under test: max_pvalue {changes.MAX_PVALUE:g}, min_sessions {changes.MIN_SESSIONS}, "
        f"window_len {changes.WINDOW_LEN}, min_magnitude {changes.MIN_MAGNITUDE:g}.",
        f"Every series: level {LEVEL:g} with {NOISE:.0%} log-normal session noise, analysed as a median TPOT.",
        "",
        "## Tuning",
        "",
        "Share of seeds with any change (flat cases), or with a change found within ± 2 sessions of each true one",
        "(steps; both ends of the 20-session bump from 40 to 60); the same data in every row. Otava as is: its",
        "`compute_change_points` at its defaults on the log values, without the merge step redone, the minimum of",
        "sessions per side and the refinement of `find_changes`. Other rows: `find_changes` with the settings named,",
        "the rest at the defaults.",
        "",
        *tuning_lines,
        "",
        "## Detection at the defaults",
        "",
        *detection_lines,
        "",
        "## False changes",
        "",
        "Flat series, 2 % noise: the share with any change at all; the same series for both settings.",
        "",
        *false_lines,
        "",
        "## Speed",
        "",
        *speed_lines,
        "",
        "The changes found in flat series are false changes (pairs of change points around a chance run of",
        "high or low sessions, as in the tables above).",
        "",
    ]
    met = {
        f"5 % step found at {STEP_AT} ± {TOLERANCE} in ≥ 95 % of seeds ({100 * found_rate:.1f} %)": found_rate >= 0.95,
        f"flat 200 sessions: false-change rate ≤ 1 % ({100 * false_rate:.1f} %, 95 % upper bound "
        f"{100 * false_hi:.2f} %)": false_rate <= 0.01,
        f"10,000 sessions in < 5 s ({long_s:.2f} s)": long_s < 5,
    }
    out.extend(targets_section(met, "too few seeds" if args.quick else None))
    if args.quick:
        out += ["", "QUICK"]
    publish_report("\n".join(out), args.out, quick=args.quick, committed=parser.get_default("out"))
    return 1 if args.check and not all(met.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
