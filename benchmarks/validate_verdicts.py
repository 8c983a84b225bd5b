"""Seeded simulation of the verdict rules' operating characteristics, on data whose true effect is known.

Every verdict below comes from the real ``pytest_llmperf.judge.verdict.judge`` / ``needs_more_runs`` /
``apply_holm`` and therefore from ``pytest_llmperf.judge.stats``; only the *data* are simulated:

- per request: log-normal TTFT and TPOT bodies with Pareto tails (3 % of TTFTs, 1 % of TPOTs), E2E built from
  both (``ttft + (out − 1)·tpot``), one ITL sample per request, failures at a small fixed rate;
- per run: a random effect in log space shared between metrics (TTFT and TPOT run effects correlate with
  ρ = 0.5; E2E and throughput inherit them), sized so that the *total* run-to-run SD of each median
  (run effect plus within-run sampling error) equals the stated noise level;
- throughput = concurrency · Σ output tokens / Σ E2E (closed loop), so it moves against E2E.

Studies: A/A family-wise false-REGRESSION rates (with Clopper–Pearson bounds) with sequential stopping at the
default budget, A/A INCONCLUSIVE rates, runs to a decision, CI coverage at fixed run counts, power curves
for a decode slowdown Δ (TPOT × (1 + Δ)) against Δ/δ, a session-wide Holm family, a systematic
baseline-day offset, and a naive single-run ±δ band as a negative control. Their baseline runs carry no
``session`` key, so ``judge()`` sees one baseline session and the between-session prior stands in.

Session offsets (study ``offsets``): on top of the run effects every pytest session gets its own offset in log
space (SD σ_session, TTFT and TPOT correlated like the run effects; E2E and throughput follow). A baseline is
1, 3 or 5 sessions of ``RUNS_PER_SESSION`` runs (what one ``--llmperf-update`` records at the default budget),
each run reduced by ``baseline.reduce_summary`` and tagged ``"session": "<id>"`` as the baseline file stores it;
the candidate is one new session with an offset of its own, judged by the same sequential loop. Reported per
cell: A/A family-wise false REGRESSION, INCONCLUSIVE and what the verdict's reasons ask for, power at Δ = 2δ,
and for contrast the per-run model (``stats.compare_log`` on median TPOT, every run an independent draw) on the
same A/A data.

Usage: ``python benchmarks/validate_verdicts.py [--quick] [--out PATH] [--jobs N] [--seed S] [--check]``.
The full run takes about 10 CPU-minutes per worker on 2 workers (longer on a shared machine) and writes
``benchmarks/results/validate_verdicts.md``; ``--quick`` is a smoke run (few replicates; its figures are too noisy
to judge the targets).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# Run as a script, this directory is on sys.path already; the explicit entry also serves an import by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import git_commit, machine_line, make_parser, markdown_table, parallel_map, publish_report, targets_section

from pytest_llmperf.judge import baseline, stats, verdict
from pytest_llmperf.results import BaselineRun

FloatArray = npt.NDArray[np.float64]

DELTA = verdict.DEFAULT_TOLERANCES["tpot_p50"]  # δ of the median metrics (all gating ratio metrics share it)
BUDGET = verdict.BUDGET
START_RUNS = 1  # candidate runs before the first look (the marker's default ``repeats``)
LOOKS = verdict.planned_looks(BUDGET, START_RUNS)
GATING = verdict.DEFAULT_GATING
LOG_GATING = tuple(name for name in GATING if verdict.METRICS[name].scale == "ratio")

# Request-level model (times in ms). The within-run spreads are modest so that the within-run sampling error of
# a median stays below the smallest noise level studied.
N_REQUESTS = 500
OUT_TOKENS = 256
CONCURRENCY = 16
TTFT_MS, TTFT_SIGMA, TTFT_TAIL, TTFT_TAIL_SHAPE = 120.0, 0.15, 0.03, 1.5
TPOT_MS, TPOT_SIGMA, TPOT_TAIL, TPOT_TAIL_SHAPE = 20.0, 0.08, 0.01, 2.5
ITL_SIGMA = 0.3
RHO = 0.5
ERROR_P = 0.001

NOISES = (0.01, 0.02, 0.03, 0.05)
KS = (5, 10)
POWER_RATIOS = (0.5, 1.0, 1.5, 2.0, 3.0)
COVERAGE_MS = (1, 2, 3, 5)
# (noise, δ) pairs that follow the rule of thumb δ ≥ 2.5 × noise for the noisier settings.
SCALED = ((0.03, 0.075), (0.05, 0.125))

# Session offsets: between-session SDs (log units) against the run-to-run noise of the cells above; the
# llama.cpp engine measured 5–16 % between sessions against 3–11 % within one.
SIGMA_RUNS = (0.02, 0.05)
SIGMA_SESSIONS = (0.0, 0.02, 0.05, 0.10)
BASELINE_SESSIONS = (1, 3, 5)
RUNS_PER_SESSION = BUDGET  # one --llmperf-update records the whole default budget in its session
CANDIDATE_SESSION = "20250611T090000-c0ffee"  # the plugin's format: start time, then 3 random bytes


@dataclass(frozen=True)
class Cell:
    """One simulated condition; ``kind`` picks the study."""

    kind: str  # "seq" | "coverage" | "session" | "offsets"
    noise: float
    k: int
    reps: int
    shift_ttft: float = 1.0
    shift_tpot: float = 1.0
    sb_ttft: float = 0.0
    sb_tpot: float = 0.0
    tests_per_session: int = 4
    delta: float = DELTA  # tolerance of the gating ratio metrics
    looks: int = LOOKS  # 1 = the ablation without the correction for sequential looks
    label: str = ""
    sigma_session: float = 0.0  # "offsets": SD of a session's log offset
    sessions: int = 0  # "offsets": baseline sessions of RUNS_PER_SESSION runs each
    reps_power: int = 0  # "offsets": replicates (the first ones) that also judge a slowdown of 2δ

    @property
    def tolerances(self) -> dict[str, float]:
        return verdict.resolve_tolerances(self.delta)


def generate(
    rng: np.random.Generator, count: int, sb_ttft: float, sb_tpot: float, shift_ttft: float, shift_tpot: float
) -> list[dict[str, Any]]:
    """``count`` run summaries with the keys the verdicts read (vLLM flavour)."""
    shape = (count, N_REQUESTS)
    z_shared, z_ttft, z_tpot = rng.standard_normal((3, count))
    b_ttft = sb_ttft * (RHO * z_shared + math.sqrt(1 - RHO**2) * z_ttft)
    b_tpot = sb_tpot * (RHO * z_shared + math.sqrt(1 - RHO**2) * z_tpot)
    ttft = TTFT_MS * shift_ttft * np.exp(b_ttft[:, None] + TTFT_SIGMA * rng.standard_normal(shape))
    ttft = np.where(rng.random(shape) < TTFT_TAIL, ttft * (1 + rng.pareto(TTFT_TAIL_SHAPE, shape)), ttft)
    tpot = TPOT_MS * shift_tpot * np.exp(b_tpot[:, None] + TPOT_SIGMA * rng.standard_normal(shape))
    tpot = np.where(rng.random(shape) < TPOT_TAIL, tpot * (1 + rng.pareto(TPOT_TAIL_SHAPE, shape)), tpot)
    e2e = ttft + (OUT_TOKENS - 1) * tpot
    itl = tpot * np.exp(ITL_SIGMA * rng.standard_normal(shape))
    ok = rng.random(shape) >= ERROR_P
    runs = []
    for r in range(count):
        good = ok[r]
        n_ok = int(good.sum())
        t, p, e, i = ttft[r][good], tpot[r][good], e2e[r][good], itl[r][good]
        runs.append(
            {
                "compat_mode": "vllm",
                "completed": n_ok,
                "failed": N_REQUESTS - n_ok,
                "error_rate": (N_REQUESTS - n_ok) / N_REQUESTS,
                "median_ttft_ms": float(np.median(t)),
                "median_tpot_ms": float(np.median(p)),
                "median_e2el_ms": float(np.median(e)),
                "p99_ttft_ms": float(np.percentile(t, 99)),
                "p99_tpot_ms": float(np.percentile(p, 99)),
                "p99_itl_ms": float(np.percentile(i, 99)),
                "p99_e2el_ms": float(np.percentile(e, 99)),
                # Closed loop: the window lasts Σ E2E / concurrency.
                "output_throughput": CONCURRENCY * n_ok * OUT_TOKENS / float(e.sum()) * 1000.0,
            }
        )
    return runs


def calibrate(noise: float, rng: np.random.Generator, runs: int) -> tuple[float, float, float, float]:
    """Run-effect SDs (TTFT, TPOT) giving a total run-to-run SD of ``noise`` for both medians.

    Returns (sb_ttft, sb_tpot, within_ttft, within_tpot); the within-run parts are measured with no run effect.
    """
    base = generate(rng, runs, 0.0, 0.0, 1.0, 1.0)
    w_ttft = float(np.std(np.log([r["median_ttft_ms"] for r in base]), ddof=1))
    w_tpot = float(np.std(np.log([r["median_tpot_ms"] for r in base]), ddof=1))
    return (
        math.sqrt(max(noise**2 - w_ttft**2, 0.0)),
        math.sqrt(max(noise**2 - w_tpot**2, 0.0)),
        w_ttft,
        w_tpot,
    )


def measured_noise(rng: np.random.Generator, cell: Cell, runs: int) -> dict[str, float]:
    """The achieved run-to-run SD (log units) of each gating ratio metric."""
    data = generate(rng, runs, cell.sb_ttft, cell.sb_tpot, 1.0, 1.0)
    out = {}
    for name in LOG_GATING:
        key = verdict.METRICS[name].key()
        out[name] = float(np.std(np.log([r[key] for r in data]), ddof=1))
    return out


def sequential(
    rng: np.random.Generator, cell: Cell, base: Sequence[Mapping[str, Any]], family_size: int | None = None
) -> tuple[verdict.Verdict, int, list[dict[str, Any]]]:
    """A fresh candidate of BUDGET runs (no session offset), judged by :func:`decide`."""
    cand = generate(rng, BUDGET, cell.sb_ttft, cell.sb_tpot, cell.shift_ttft, cell.shift_tpot)
    v, m = decide(cell, cand, base, family_size)
    return v, m, cand


def decide(
    cell: Cell, cand: Sequence[dict[str, Any]], base: Sequence[Mapping[str, Any]], family_size: int | None = None
) -> tuple[verdict.Verdict, int]:
    """The plugin's loop: START_RUNS candidate runs, then one more while undecided, up to BUDGET."""
    m = START_RUNS
    while True:
        v = verdict.judge(cand[:m], base, tolerances=cell.tolerances, family_size=family_size, looks=cell.looks)
        if not verdict.needs_more_runs(v, m, BUDGET):
            return v, m
        m += 1


def session_offset(rng: np.random.Generator, sigma: float) -> tuple[float, float]:
    """One session's multiplicative (TTFT, TPOT) offset: log-normal with SD ``sigma``, correlated like run effects."""
    z_shared, z_ttft, z_tpot = rng.standard_normal(3)
    rest = math.sqrt(1 - RHO**2)
    return math.exp(sigma * (RHO * z_shared + rest * z_ttft)), math.exp(sigma * (RHO * z_shared + rest * z_tpot))


def session_runs(
    rng: np.random.Generator, cell: Cell, session_id: str, shift_tpot: float = 1.0
) -> list[dict[str, Any]]:
    """RUNS_PER_SESSION runs of one pytest session, each carrying the session id as the plugin's summaries do."""
    off_ttft, off_tpot = session_offset(rng, cell.sigma_session)
    runs = generate(rng, RUNS_PER_SESSION, cell.sb_ttft, cell.sb_tpot, off_ttft, off_tpot * shift_tpot)
    for run in runs:
        run["session_id"] = session_id
    return runs


def stored_baseline(rng: np.random.Generator, cell: Cell) -> list[BaselineRun]:
    """``cell.sessions`` sessions, each run reduced the way the baseline file keeps it (``"session": "<id>"``)."""
    return [
        baseline.reduce_summary(run)
        for s in range(cell.sessions)
        for run in session_runs(rng, cell, f"202506{s + 1:02d}T090000-{s:06x}")
    ]


def per_run_alarm(cand: Sequence[dict[str, Any]], base: Sequence[Mapping[str, Any]], delta: float) -> bool:
    """Contrast: the per-run model on median TPOT (every run an independent draw, sessions ignored), one look at
    all candidate runs, REGRESSION by the verdict's rule: one-sided p ≤ α and point effect ≥ ln(1 + δ)."""
    key = verdict.METRICS["tpot_p50"].key()
    cmp = stats.compare_log(stats.log_values([r[key] for r in cand]), stats.log_values([r[key] for r in base]))
    return cmp.p_greater() <= verdict.DEFAULT_ALPHA and cmp.delta >= math.log1p(delta)


_MORE_SESSIONS = re.compile(r"≈(\d+) more baseline session")


def what_decides(mv: verdict.MetricVerdict) -> str | int:
    """What an INCONCLUSIVE metric asks for: "runs" (more candidate runs), N more baseline sessions (as its reason
    says), or "never" (futile without a number: only a wider tolerance or A/B mode would decide)."""
    if not mv.futile:
        return "runs"
    found = _MORE_SESSIONS.search(mv.reason)
    return int(found.group(1)) if found else "never"


def band_alarm(cand: dict[str, Any], base: Sequence[dict[str, Any]], delta: float) -> bool:
    """Negative control: one candidate run vs the baseline mean with a fixed ±δ band on every gating ratio."""
    for name in LOG_GATING:
        d = verdict.METRICS[name]
        key = d.key()
        ratio = cand[key] / (sum(r[key] for r in base) / len(base))
        if (ratio > 1 + delta) if d.direction == "lower" else (ratio < 1 - delta):
            return True
    return False


def run_cell(args: tuple[int, int, Cell]) -> dict[str, Any]:
    seed, index, cell = args
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    # CPU time, not wall time: the machine may be shared, and the report should say what the study costs.
    start = time.process_time()
    if cell.kind == "seq":
        out = _seq_cell(rng, cell)
    elif cell.kind == "coverage":
        out = _coverage_cell(rng, cell)
    elif cell.kind == "offsets":
        out = _offsets_cell(rng, cell)
    else:
        out = _session_cell(rng, cell)
    return {**out, "cpu": time.process_time() - start}


def _seq_cell(rng: np.random.Generator, cell: Cell) -> dict[str, Any]:
    overall: dict[str, int] = {}
    per_metric: dict[str, dict[str, int]] = {name: {} for name in GATING}
    runs_total = 0
    band = 0
    for _ in range(cell.reps):
        base = generate(rng, cell.k, cell.sb_ttft, cell.sb_tpot, 1.0, 1.0)
        v, m, cand = sequential(rng, cell, base)
        overall[v.status] = overall.get(v.status, 0) + 1
        for mv in v.gating:
            per_metric[mv.name][mv.status] = per_metric[mv.name].get(mv.status, 0) + 1
        runs_total += m
        band += band_alarm(cand[0], base, cell.delta)
    return {"cell": cell, "overall": overall, "per_metric": per_metric, "runs": runs_total, "band": band}


def _coverage_cell(rng: np.random.Generator, cell: Cell) -> dict[str, Any]:
    # Truth on the raw candidate/baseline ratio: medians scale exactly; throughput moves by 1/(scale of E2E),
    # which is exact only when TTFT and TPOT shift together (the coverage cells only use such shifts).
    assert cell.shift_ttft == cell.shift_tpot
    truth: dict[str, float]
    truth = {name: cell.shift_tpot for name in LOG_GATING}
    truth["output_tok_s"] = 1.0 / cell.shift_tpot
    upper_ok = {m: 0 for m in COVERAGE_MS}
    lower_ok = {m: 0 for m in COVERAGE_MS}
    both_ok = {m: 0 for m in COVERAGE_MS}
    total = {m: 0 for m in COVERAGE_MS}
    for _ in range(cell.reps):
        base = generate(rng, cell.k, cell.sb_ttft, cell.sb_tpot, 1.0, 1.0)
        cand = generate(rng, max(COVERAGE_MS), cell.sb_ttft, cell.sb_tpot, cell.shift_ttft, cell.shift_tpot)
        for m in COVERAGE_MS:
            v = verdict.judge(cand[:m], base, tolerances=cell.tolerances)
            for name in LOG_GATING:
                mv = v.metric(name)
                assert mv.lower is not None
                assert mv.upper is not None
                hi_ok = mv.upper >= truth[name]
                lo_ok = mv.lower <= truth[name]
                upper_ok[m] += hi_ok
                lower_ok[m] += lo_ok
                both_ok[m] += hi_ok and lo_ok
                total[m] += 1
    return {"cell": cell, "upper": upper_ok, "lower": lower_ok, "both": both_ok, "total": total}


def _session_cell(rng: np.random.Generator, cell: Cell) -> dict[str, Any]:
    """Sessions of several independent tests: call-time Bonferroni over the session family, then Holm."""
    family = cell.tests_per_session * len(GATING)
    call_time = after_holm = 0
    for _ in range(cell.reps):
        verdicts = []
        for _t in range(cell.tests_per_session):
            base = generate(rng, cell.k, cell.sb_ttft, cell.sb_tpot, 1.0, 1.0)
            v, _m, _c = sequential(rng, cell, base, family_size=family)
            verdicts.append(v)
        call_time += any(v.status == verdict.REGRESSION for v in verdicts)
        after_holm += any(v.status == verdict.REGRESSION for v in verdict.apply_holm(verdicts))
    return {"cell": cell, "call_time": call_time, "after_holm": after_holm}


def _offsets_cell(rng: np.random.Generator, cell: Cell) -> dict[str, Any]:
    """A/A and a 2δ TPOT slowdown against a baseline of several sessions; the candidate is a new session."""
    out: dict[str, Any] = {"cell": cell, "aa": {}, "power": {}, "asks": {}, "more_sessions": [], "reasons": []}
    out |= {"tpot_reg": 0, "per_run": 0, "runs": 0, "power_tpot": 0, "sigma_used": []}
    for rep in range(cell.reps):
        base = stored_baseline(rng, cell)
        cand = session_runs(rng, cell, CANDIDATE_SESSION)
        v, m = decide(cell, cand, base)
        out["aa"][v.status] = out["aa"].get(v.status, 0) + 1
        out["runs"] += m
        out["per_run"] += per_run_alarm(cand, base, cell.delta)
        tpot = v.metric("tpot_p50")
        out["tpot_reg"] += tpot.status == verdict.REGRESSION
        out["sigma_used"].append(tpot.sigma_session)
        if tpot.status == verdict.INCONCLUSIVE:
            ask = what_decides(tpot)
            if isinstance(ask, int):
                out["more_sessions"].append(ask)
                ask = "sessions"
            out["asks"][ask] = out["asks"].get(ask, 0) + 1
            if len(out["reasons"]) < 2 and ask not in {r[0] for r in out["reasons"]}:
                out["reasons"].append((ask, tpot.reason))
        if rep < cell.reps_power:
            slow = session_runs(rng, cell, CANDIDATE_SESSION, shift_tpot=1 + 2 * cell.delta)
            pv, _ = decide(cell, slow, base)
            out["power"][pv.status] = out["power"].get(pv.status, 0) + 1
            out["power_tpot"] += pv.metric("tpot_p50").status == verdict.REGRESSION
    return out


# --- report ------------------------------------------------------------------------------------------------


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def cp(x: int, n: int) -> str:
    lo, hi = stats.clopper_pearson(x, n)
    return f"{pct(x / n)} [{pct(lo)}, {pct(hi)}]"


def build_cells(quick: bool, calib: dict[float, tuple[float, float, float, float]]) -> list[Cell]:
    scale = 0.02 if quick else 1.0
    reps_aa = max(30, int(3000 * scale))
    reps_power = max(12, int(600 * scale))
    reps_cov = max(12, int(2000 * scale))
    reps_session = max(6, int(1000 * scale))
    # 1000 A/A replicates put the CP-95 upper bound of an observed 1 % below 2 % (1.83 %).
    reps_offsets = max(20, int(1000 * scale))

    def cell(kind: str, noise: float, k: int, reps: int, **kw: Any) -> Cell:
        sb_ttft, sb_tpot, _, _ = calib[noise]
        return Cell(kind, noise, k, reps, sb_ttft=sb_ttft, sb_tpot=sb_tpot, **kw)

    cells: list[Cell] = []
    for noise in NOISES:
        for k in KS:
            cells.append(cell("seq", noise, k, reps_aa, label="aa"))
    # The rule of thumb δ ≥ 2.5 × noise, applied to the noisier settings.
    for noise, delta in SCALED:
        for k in KS:
            cells.append(cell("seq", noise, k, reps_aa, delta=delta, label="aa"))
    for noise in (0.02, 0.05):
        cells.append(cell("seq", noise, 2, reps_aa // 2, label="aa"))
    for k in KS:  # ablation: every look at the full α
        cells.append(cell("seq", 0.05, k, reps_aa, looks=1, label="aa-nolooks"))
    cells.append(cell("seq", 0.02, 10, reps_aa // 2, shift_ttft=1.03, shift_tpot=1.03, label="day-offset"))
    for noise, delta in [*((n, DELTA) for n in NOISES), *SCALED]:
        for k in KS:
            for r in POWER_RATIOS:
                shift = 1 + r * delta
                cells.append(cell("seq", noise, k, reps_power, delta=delta, shift_tpot=shift, label=f"power:{r}"))
    for noise in (0.02, 0.05):
        for k in (2, 5, 10):
            cells.append(cell("coverage", noise, k, reps_cov, label="cov"))
            shift = 1 + 2 * DELTA
            cells.append(cell("coverage", noise, k, reps_cov // 2, shift_ttft=shift, shift_tpot=shift, label="cov"))
    cells.append(cell("session", 0.05, 5, reps_session, label="session"))
    cells.append(cell("session", 0.02, 10, reps_session, label="session"))
    # Appended last so that the cells above keep their seeds. δ = 5 % everywhere, and at 5 % noise also the
    # rule-of-thumb tolerance of the cells above (SCALED).
    for noise in SIGMA_RUNS:
        deltas = [DELTA, *(d for n, d in SCALED if n == noise)]
        for delta in deltas:
            for sigma_session in SIGMA_SESSIONS:
                for sessions in BASELINE_SESSIONS:
                    runs = sessions * RUNS_PER_SESSION
                    kw = dict(delta=delta, sigma_session=sigma_session, sessions=sessions, label="offsets")
                    cells.append(cell("offsets", noise, runs, reps_offsets, reps_power=reps_offsets // 2, **kw))
    return cells


def cost(cell: Cell) -> int:
    """Rough work of a cell (simulated runs), to hand out the heaviest cells first."""
    if cell.kind == "coverage":
        return cell.reps * (cell.k + max(COVERAGE_MS) * 4)
    if cell.kind == "session":
        return cell.reps * cell.tests_per_session * (cell.k + BUDGET)
    if cell.kind == "offsets":
        return cell.reps * (cell.k + 2 * BUDGET) + cell.reps_power * 2 * BUDGET
    return cell.reps * (cell.k + BUDGET)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run with few replicates (noisy figures)")
    parser.add_argument("--seed", type=int, default=20250604)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "validate_verdicts.md")
    parser.add_argument(
        "--only", default="", help="comma-separated studies: aa, aa-nolooks, day-offset, power, cov, session, offsets"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    args.command = " ".join(["python benchmarks/validate_verdicts.py", *(sys.argv[1:] if argv is None else argv)])

    t0 = time.perf_counter()
    cal_rng = np.random.default_rng(np.random.SeedSequence(args.seed, spawn_key=(10**6,)))
    calib = {noise: calibrate(noise, cal_rng, 300 if args.quick else 2000) for noise in NOISES}
    # Seeds follow the cell's position in the full list, so --only and --jobs never change a figure.
    tasks = [(args.seed, i, c) for i, c in enumerate(build_cells(args.quick, calib))]
    if args.only:
        wanted = set(args.only.split(","))
        tasks = [t for t in tasks if t[2].label.split(":")[0] in wanted]
    # Heaviest cells first so that the workers finish together.
    tasks.sort(key=lambda t: -cost(t[2]))
    results = parallel_map(run_cell, tasks, args.jobs)
    noise_rng = np.random.default_rng(np.random.SeedSequence(args.seed, spawn_key=(10**6 + 1,)))
    achieved = {}
    for noise in NOISES:
        sb_ttft, sb_tpot, _, _ = calib[noise]
        probe = Cell("seq", noise, 5, 0, sb_ttft=sb_ttft, sb_tpot=sb_tpot)
        achieved[noise] = measured_noise(noise_rng, probe, 400 if args.quick else 3000)
    elapsed = time.perf_counter() - t0

    report, met = render(args, results, calib, achieved, elapsed)
    publish_report(report, args.out, quick=args.quick, committed=parser.get_default("out"))
    return 1 if args.check and not all(met.values()) else 0


def render_offsets(w: Any, results: Sequence[dict[str, Any]], met: dict[str, bool]) -> None:
    """The session-offset study: one table per tolerance, sample reasons, and its target."""
    w("## Session offsets: a baseline of several sessions, the candidate in a new one")
    w("")
    w("Each pytest session shifts all its runs by its own log offset (SD σ_session; TTFT and TPOT correlate with")
    w(f"ρ = {RHO}, E2E and throughput follow); σ_run is the run-to-run SD within a session, as calibrated above.")
    w(f"The baseline is S sessions of {RUNS_PER_SESSION} runs, what `--llmperf-update` records per session at the")
    w("default budget, each run reduced by `baseline.reduce_summary` and carrying `session` as the baseline file")
    w("stores it; `judge()` groups them (`stats.compare_sessions`). The candidate is one new session with an offset")
    w(f"of its own, judged by the plugin's sequential loop (budget {BUDGET}, each look at α / {LOOKS}).")
    w("")
    w("- **false REGRESSION**: A/A, the test's verdict is REGRESSION through any gating claim, with the 95 %")
    w("  Clopper–Pearson interval. **per-run model**, for contrast on the same A/A data: `stats.compare_log` on")
    w(f"  median TPOT (every run an independent draw, sessions ignored) with all {BUDGET} candidate runs, REGRESSION")
    w(f"  when its one-sided p ≤ α = {verdict.DEFAULT_ALPHA} and the point effect ≥ ln(1 + δ).")
    w("- **INCONCL. / PASS**: A/A test verdicts; **σ_s used**: median between-session SD in the TPOT verdict")
    w(f"  (the {stats.SESSION_SD_PRIOR:.0%} prior below {stats.MIN_SESSIONS} sessions, then the estimate shrunk")
    w("  towards it).")
    w("- **power 2δ**: TPOT × (1 + 2δ) in the candidate's session; P(test REGRESSION) / P(REGRESSION on median")
    w("  TPOT), and the share left INCONCLUSIVE.")
    w("- **A/A TPOT INCONCLUSIVE asks**: what the INCONCLUSIVE median-TPOT verdicts' reasons ask for, as shares")
    w("  of all A/A tests: more candidate runs, N more baseline sessions (median N), or nothing helps (the")
    w("  between-session spread alone exceeds the tolerance: widen it or use A/B mode).")
    w("")
    ok = True
    for delta in sorted({r["cell"].delta for r in results}):
        w(f"### δ = {delta:.1%}")
        w("")
        rows = []
        chosen = [r for r in results if r["cell"].delta == delta]
        for r in sorted(chosen, key=lambda r: (r["cell"].noise, r["cell"].sigma_session, r["cell"].sessions)):
            row, fine = offsets_row(r)
            rows.append(row)
            ok &= fine
        header = ["σ_run", "σ_session", "S (runs)", "false REGRESSION", "per-run model", "INCONCL.", "PASS"]
        header += ["mean runs", "σ_s used", "power 2δ: test / TPOT", "INCONCL. at 2δ", "A/A TPOT INCONCLUSIVE asks"]
        header += ["reps (A/A, 2δ)"]
        w(markdown_table(header, rows))
        w("")
    samples = [r for r in results if r["cell"].delta == DELTA and r["cell"].noise == SIGMA_RUNS[0] and r["reasons"]]
    if samples:
        w("Sample reasons (median TPOT, A/A, INCONCLUSIVE after the loop; σ_run 2 %, δ = 5 %):")
        w("")
        for r in sorted(samples, key=lambda r: (r["cell"].sigma_session, r["cell"].sessions)):
            c = r["cell"]
            if c.sigma_session not in (0.05, 0.10):
                continue
            for _ask, reason in r["reasons"]:
                w(f"- σ_session {pct(c.sigma_session)}, S = {c.sessions}: “{reason}”")
        w("")
    missed = [r for r in results if not offsets_row(r)[1]]
    if missed:
        w("False-REGRESSION target (≤ 1 %, CP-95 upper ≤ 2 %) missed in:")
        w("")
        for r in sorted(
            missed, key=lambda r: (r["cell"].delta, r["cell"].noise, r["cell"].sigma_session, r["cell"].sessions)
        ):
            c = r["cell"]
            w(
                f"- δ = {c.delta:.1%}, σ_run {pct(c.noise)}, σ_session {pct(c.sigma_session)}, "
                f"{c.sessions} session(s): {cp(r['aa'].get(verdict.REGRESSION, 0), c.reps)}"
            )
        w("")
    met["A/A family-wise REGRESSION ≤ 1 % with 95 % upper bound ≤ 2 % in every session-offset cell"] = ok


def offsets_row(r: dict[str, Any]) -> tuple[list[str], bool]:
    """One table row of the session-offset study, and whether its false-REGRESSION rate meets the target."""
    c: Cell = r["cell"]
    n, n_power = c.reps, c.reps_power
    reg = r["aa"].get(verdict.REGRESSION, 0)
    _lo, hi = stats.clopper_pearson(reg, n)
    asks = []
    for what in ("runs", "sessions", "never"):
        count = r["asks"].get(what, 0)
        if count:
            name = f"+{statistics.median(r['more_sessions']):g} sessions" if what == "sessions" else what
            asks.append(f"{name} {pct(count / n)}")
    power = "—"
    if n_power:
        power = f"{pct(r['power'].get(verdict.REGRESSION, 0) / n_power)} / {pct(r['power_tpot'] / n_power)}"
    row = [
        pct(c.noise),
        pct(c.sigma_session),
        f"{c.sessions} ({c.k})",
        cp(reg, n),
        cp(r["per_run"], n),
        pct(r["aa"].get(verdict.INCONCLUSIVE, 0) / n),
        pct(r["aa"].get(verdict.PASS, 0) / n),
        f"{r['runs'] / n:.2f}",
        pct(statistics.median(r["sigma_used"])),
        power,
        pct(r["power"].get(verdict.INCONCLUSIVE, 0) / n_power) if n_power else "—",
        ", ".join(asks) or "—",
        f"{n}, {n_power}",
    ]
    return row, reg / n <= 0.01 and hi <= 0.02


def reading_notes() -> list[str]:
    """The bullets on the studies without session keys (one baseline session, the prior standing in)."""
    prior_se = math.sqrt(2) * stats.SESSION_SD_PRIOR  # one baseline session and the candidate's own
    min_delta = math.expm1(stats.normal_quantile(1 - verdict.PASS_ALPHA) * prior_se)
    z_reg = stats.normal_quantile(1 - verdict.DEFAULT_ALPHA / (LOOKS * len(GATING)))
    return [
        "- The unit of replication is the run. The naive single-run ±δ band, on the same data, fires far more",
        "  often than the verdict's REGRESSION whenever runs are noisy (column 'band alarms').",
        "- The studies without session keys judge a one-session baseline, so the "
        f"{stats.SESSION_SD_PRIOR:.0%} between-session prior",
        f"  stands in whatever the data: se ≥ √2 × {stats.SESSION_SD_PRIOR:.0%} = {prior_se:.1%} on the log scale "
        "(the baseline's session and the",
        f"  candidate's). PASS then needs δ > {min_delta:.1%} however calm the runs (so at δ = 5 % A/A is "
        "INCONCLUSIVE almost always),",
        f"  and a REGRESSION must reach about {z_reg:.1f} × se ≈ {math.expm1(z_reg * prior_se):.0%} "
        "(α / looks, Holm's first step): power at 2δ = 10 % is",
        "  about 0 and at 3δ below one half. This is the price of a baseline from one session, deliberately: the",
        "  INCONCLUSIVE and power targets below were set for the per-run model (runs as independent draws of the",
        "  next session) and are missed at δ = 5 % by design. More baseline sessions, a wider tolerance or A/B",
        "  mode are the remedies, never a larger α; the session-offset section shows what 3 and 5 sessions give.",
        "- REGRESSION needs significance *and* a point estimate beyond δ. That bounds false alarms when nothing",
        "  changed; with the prior, a change just under δ (the baseline-day offset line, the Δ = 0.5δ column) is",
        "  hardly ever called.",
        "- Each sequential look tests at α / looks (Bonferroni over the planned looks); the ablation line above",
        "  shows the false-alarm rate without it.",
        "- Below 3 baseline runs the 3 % noise floor makes verdicts cautious (mostly INCONCLUSIVE, REGRESSION",
        "  only for gross effects); its intervals under-cover when the real noise exceeds the floor.",
    ]


def offsets_notes(results: Sequence[dict[str, Any]]) -> list[str]:
    """The bullets on the session-offset study, with its figures."""

    def share(r: dict[str, Any], status: str, part: str = "aa") -> float:
        n = r["cell"].reps if part == "aa" else r["cell"].reps_power
        return float(r[part].get(status, 0) / max(n, 1))

    missed = [r for r in results if not offsets_row(r)[1]]
    at5 = [r for r in results if r["cell"].delta == DELTA]
    per_run = [r["per_run"] / r["cell"].reps for r in at5 if r["cell"].sigma_session > 0]
    worst = max(share(r, verdict.REGRESSION) for r in results if r["cell"].sigma_session > 0)
    inconcl = [share(r, verdict.INCONCLUSIVE) for r in at5 if r["cell"].sigma_session > 0]
    power = [share(r, verdict.REGRESSION, "power") for r in at5]
    calm = sorted(
        (r for r in at5 if r["cell"].noise == SIGMA_RUNS[0] and r["cell"].sigma_session == 0),
        key=lambda r: r["cell"].sessions,
    )
    lines = [
        "- Sessions matter: on the same A/A data with a session offset, at δ = 5 %, the per-run model",
        "  (`stats.compare_log`, runs as independent draws) calls a REGRESSION of median TPOT in "
        f"{pct(min(per_run))}–{pct(max(per_run))}",
        f"  of tests, growing with σ_session; the session model's family-wise rate stays lower (at most {pct(worst)}),",
        "  but " + ("not within the target everywhere." if missed else "within the target in every cell."),
    ]
    if missed:
        top = max(SIGMA_SESSIONS)
        noisiest = [r for r in results if r["cell"].sigma_session == top and r["cell"].sessions > 1]
        used = [statistics.median(r["sigma_used"]) for r in noisiest]
        lines += [
            f"- The false-REGRESSION target is missed in {len(missed)} of {len(results)} cells (listed under the "
            "tables). With one",
            f"  baseline session the {stats.SESSION_SD_PRIOR:.0%} prior stands in for a larger true spread; with 3–5 "
            "sessions the estimate is",
            f"  shrunk towards the prior with {stats.PRIOR_SESSIONS} pseudo-sessions and has few df, so at σ_session "
            f"{top:.0%} it stays low",
            f"  (median σ_s used {pct(min(used))}–{pct(max(used))}).",
        ]
    lines += [
        f"- At δ = 5 % with a session offset, {pct(min(inconcl))}–{pct(max(inconcl))} of A/A tests end "
        f"INCONCLUSIVE, and power at 2δ is at most {pct(max(power))}",
        "  in any cell: the honest answer when sessions differ by about δ. Below 3 sessions the reasons ask for the",
        f"  {stats.MIN_SESSIONS}-session minimum; from 3 on they mostly say that no number of sessions decides at "
        "this tolerance (widen it",
        "  or use A/B mode). At σ_session = 0 that is too pessimistic: the shrunk prior falls as sessions are added",
        f"  (σ_run {SIGMA_RUNS[0]:.0%}, σ_s used / A/A PASS: "
        + ", ".join(
            f"{r['cell'].sessions} session(s) {pct(statistics.median(r['sigma_used']))} / {pct(share(r, verdict.PASS))}"
            for r in calm
        )
        + ").",
    ]
    return lines


def render(
    args: argparse.Namespace,
    results: Sequence[dict[str, Any]],
    calib: dict[float, tuple[float, float, float, float]],
    achieved: dict[float, dict[str, float]],
    elapsed: float,
) -> tuple[str, dict[str, bool]]:
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_label.setdefault(r["cell"].label.split(":")[0], []).append(r)
    out: list[str] = []
    w = out.append
    mode = "QUICK smoke run: too few replicates to judge the targets" if args.quick else "full run"
    w("# Verdict validation (seeded simulation)")
    w("")
    w(f"Generated by `{args.command}` ({mode}),")
    today = datetime.datetime.now(datetime.timezone.utc)
    cpu = {label: sum(r["cpu"] for r in rs) for label, rs in by_label.items()}
    w(f"seed {args.seed}, {elapsed:.0f} s on {args.jobs} worker(s) ({sum(cpu.values()):.0f} s CPU in the cells, of")
    w(f"which the session-offset study {cpu.get('offsets', 0.0):.0f} s), {today:%Y-%m-%d}.")
    w(f"Machine: {machine_line()}; commit {git_commit()}.")
    w("")
    w("Defaults under test:")
    w("")
    w(f"- δ = {DELTA:.0%} for the median latencies and output throughput,")
    w(f"  ±{verdict.DEFAULT_TOLERANCES['error_rate'] * 100:.1f} points for the error rate;")
    w(f"- α = {verdict.DEFAULT_ALPHA} family-wise, Holm over the {len(GATING)} gating claims of a test;")
    w(f"- PASS at the one-sided {1 - verdict.PASS_ALPHA:.0%} upper bound;")
    w(f"- {START_RUNS} candidate run first, then one more while undecided, up to a budget of {BUDGET}")
    w(f"  ({LOOKS} looks, each at α / {LOOKS});")
    w(f"- below {stats.MIN_BASELINE_RUNS} baseline runs: noise floor {stats.DEFAULT_NOISE_FLOOR:.0%}, and a regression")
    w(f"  must be gross (≥ {verdict.GROSS_FACTOR:g} × ln(1 + δ) on the log scale).")
    w("")
    w(f"Simulated runs: {N_REQUESTS} requests each, failure probability {ERROR_P} per request. 'noise' is the")
    w("run-to-run SD of each median in log units; k is the number of baseline runs. Rows with a δ other than")
    w("5 % apply the rule of thumb δ ≥ 2.5 × noise.")
    w("")

    w("## Noise calibration")
    w("")
    rows = []
    for noise in NOISES:
        sb_ttft, sb_tpot, w_ttft, w_tpot = calib[noise]
        a = achieved[noise]
        rows.append(
            [
                pct(noise),
                f"{pct(w_ttft)} / {pct(w_tpot)}",
                f"{pct(sb_ttft)} / {pct(sb_tpot)}",
                " / ".join(pct(a[name]) for name in LOG_GATING),
            ]
        )
    header = ["noise", "within-run SE TTFT / TPOT", "run effect TTFT / TPOT", "achieved " + " / ".join(LOG_GATING)]
    w(markdown_table(header, rows))
    w("")

    met: dict[str, bool] = {}
    w("## A/A: false alarms, INCONCLUSIVE and runs to a decision (sequential, default budget)")
    w("")
    w("The baselines of this and the next sections carry no `session` key (as before sessions were stored), so")
    w("`judge()` counts them as one session and the between-session prior stands in, although these data have")
    w("no session offset; see 'Reading the figures'.")
    w("")
    w("REGRESSION (family) = the test's verdict is REGRESSION through any of its gating claims, with the 95 %")
    w("Clopper–Pearson interval. 'INCONCL. worst' is the worst of the four gating ratio metrics; 'test' counts a")
    w("test INCONCLUSIVE when any gating metric is. 'band' is a naive negative control on the same data: one")
    w("run against the baseline mean with a fixed ±δ band on each gating ratio metric.")
    w("")
    rows = []
    fw_ok = True
    inc_ok: dict[int, bool] = {k: True for k in KS}
    for r in sorted(by_label.get("aa", []), key=lambda r: (r["cell"].k, r["cell"].noise, r["cell"].delta)):
        c: Cell = r["cell"]
        n = c.reps
        reg = r["overall"].get(verdict.REGRESSION, 0)
        inc = {name: r["per_metric"][name].get(verdict.INCONCLUSIVE, 0) / n for name in GATING}
        worst = max(LOG_GATING, key=lambda name: inc[name])
        rows.append(
            [
                pct(c.noise),
                f"{c.delta:.1%}",
                str(c.k),
                cp(reg, n),
                f"{pct(inc[worst])} ({worst})",
                pct(inc["error_rate"]),
                pct(r["overall"].get(verdict.INCONCLUSIVE, 0) / n),
                f"{r['runs'] / n:.2f}",
                pct(r["band"] / n),
                str(n),
            ]
        )
        if c.k >= 5:
            _lo, hi = stats.clopper_pearson(reg, n)
            fw_ok &= reg / n <= 0.01 and hi <= 0.02
            if c.noise <= 0.02 and c.delta == DELTA:
                inc_ok[c.k] &= inc[worst] <= 0.10
    header = ["noise", "δ", "k", "REGRESSION (family)", "INCONCL. worst", "INCONCL. error rate", "INCONCL. test"]
    header += ["mean runs", "band alarms", "reps"]
    w(markdown_table(header, rows))
    w("")
    met["A/A family-wise REGRESSION ≤ 1 % with 95 % upper bound ≤ 2 % (noise ≤ 5 %, k ≥ 5)"] = fw_ok
    for k in KS:
        met[f"A/A INCONCLUSIVE ≤ 10 % per gating ratio metric (noise ≤ 2 %, δ = 5 %, k = {k}, budget {BUDGET})"] = (
            inc_ok[k]
        )

    for r in sorted(by_label.get("aa-nolooks", []), key=lambda r: r["cell"].k):
        c = r["cell"]
        w(
            f"Ablation, every sequential look at the full α (no α / {LOOKS}): noise {pct(c.noise)}, δ = "
            f"{c.delta:.0%}, k = {c.k}: family-wise REGRESSION {cp(r['overall'].get(verdict.REGRESSION, 0), c.reps)}."
        )
        w("")

    for r in by_label.get("day-offset", []):
        c = r["cell"]
        n = c.reps
        w(
            f"Baseline-day offset, a real but tolerated change (every candidate run 3 % slower, δ = 5 %, noise "
            f"{pct(c.noise)}, k = {c.k}): REGRESSION {cp(r['overall'].get(verdict.REGRESSION, 0), n)}, PASS "
            f"{pct(r['overall'].get(verdict.PASS, 0) / n)}, INCONCLUSIVE "
            f"{pct(r['overall'].get(verdict.INCONCLUSIVE, 0) / n)}, mean runs {r['runs'] / n:.2f}. The rule bounds "
            "false alarms when nothing changed; a change just under δ is sometimes called (the point estimate may "
            "cross δ at one of the sequential looks)."
        )
        w("")

    if by_label.get("session"):
        w("## Session family (A/A)")
        w("")
        w("Independent tests in one session: each test judged at call time with Bonferroni over the session's")
        w("claims (`judge(family_size=N)`), then `apply_holm` over the session.")
        w("")
        rows = []
        for r in by_label["session"]:
            c = r["cell"]
            fam = c.tests_per_session * len(GATING)
            rows.append(
                [
                    pct(c.noise),
                    str(c.k),
                    f"{c.tests_per_session} tests, {fam} claims",
                    cp(r["call_time"], c.reps),
                    cp(r["after_holm"], c.reps),
                    str(c.reps),
                ]
            )
        w(markdown_table(["noise", "k", "family", "REGRESSION at call time", "after session Holm", "sessions"], rows))
        w("")

    if by_label.get("offsets"):
        render_offsets(w, by_label["offsets"], met)

    if by_label.get("cov"):
        w("## Interval coverage (fixed candidate runs m)")
        w("")
        w("Share of intervals covering the true ratio, pooled over the four gating ratio metrics and over A/A and a")
        w("uniform ×1.10 slowdown (log-scale equivariance makes them the same experiment). Nominal: each one-sided")
        w("bound 95 % (the PASS bound is the upper one), the two-sided interval 90 %. k = 2 uses the 3 % noise")
        w("floor: conservative when the true noise is lower, not when it is higher.")
        w("")
        pooled: dict[tuple[float, int], dict[str, dict[int, int]]] = {}
        for r in by_label["cov"]:
            c = r["cell"]
            acc = pooled.setdefault((c.noise, c.k), {"upper": {}, "lower": {}, "both": {}, "total": {}})
            for part in acc:
                for m in COVERAGE_MS:
                    acc[part][m] = acc[part].get(m, 0) + r[part][m]
        rows = []
        cov_ok = True
        for (noise, k), acc in sorted(pooled.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            cells = []
            for m in COVERAGE_MS:
                t = acc["total"][m]
                up, lo, both = acc["upper"][m] / t, acc["lower"][m] / t, acc["both"][m] / t
                cells.append(f"{pct(up)} / {pct(lo)} / {pct(both)}")
                if k >= 5:
                    cov_ok &= up >= 0.94 and lo >= 0.94
            rows.append([pct(noise), str(k), *cells])
        w(markdown_table(["noise", "k", *(f"m={m}: upper / lower / both" for m in COVERAGE_MS)], rows))
        w("")
        met["coverage ≥ 94 % for each one-sided 95 % bound (k ≥ 5)"] = cov_ok

    if by_label.get("power"):
        w("## Power: decode slowdown Δ (TPOT × (1 + Δ)), sequential, default budget")
        w("")
        w("Each cell: P(REGRESSION on median TPOT) / P(test REGRESSION) / P(PASS on median TPOT), mean candidate")
        w("runs. At Δ ≥ δ a PASS is a missed regression; at Δ = 0.5δ a REGRESSION is a call of a tolerated change.")
        w("The loop stops at the first REGRESSION of any gating metric, so the TPOT column undercounts when E2E or")
        w("throughput (which share the slowdown) fire first; the test column is what fails a test.")
        w("")
        grid: dict[tuple[float, float, int], dict[float, dict[str, Any]]] = {}
        for r in by_label["power"]:
            c = r["cell"]
            grid.setdefault((c.noise, c.delta, c.k), {})[float(c.label.split(":")[1])] = r
        rows = []
        power_ok: dict[int, bool] = {k: True for k in KS}
        for (noise, delta, k), by_ratio in sorted(grid.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
            cells = []
            for ratio in POWER_RATIOS:
                r = by_ratio[ratio]
                n = r["cell"].reps
                p_metric = r["per_metric"]["tpot_p50"].get(verdict.REGRESSION, 0) / n
                p_test = r["overall"].get(verdict.REGRESSION, 0) / n
                p_pass = r["per_metric"]["tpot_p50"].get(verdict.PASS, 0) / n
                cells.append(f"{pct(p_metric)} / {pct(p_test)} / {pct(p_pass)}, {r['runs'] / n:.1f}")
                if ratio == 2.0 and delta >= 2.5 * noise - 1e-12:
                    power_ok[k] &= p_metric >= 0.80
            rows.append([pct(noise), f"{delta:.1%}", str(k), *cells])
        w(markdown_table(["noise", "δ", "k", *(f"Δ = {r:g}δ" for r in POWER_RATIOS)], rows))
        w("")
        for k in KS:
            met[f"power ≥ 80 % at Δ = 2δ on median TPOT (δ ≥ 2.5 × noise, k = {k}, budget {BUDGET})"] = power_ok[k]

    w("## Reading the figures: trade-offs in the defaults")
    w("")
    for line in reading_notes():
        w(line)
    if by_label.get("offsets"):
        for line in offsets_notes(by_label["offsets"]):
            w(line)
    w("")
    out.extend(targets_section(met, "too few replicates" if args.quick else None))
    return "\n".join(out), met


if __name__ == "__main__":
    sys.exit(main())
