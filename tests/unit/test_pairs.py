"""``python -m pytest_llmperf.pairs`` with N documents: labels, sweeps matched across documents (load-neutral
fields left out), mixed documents refused, and the overlay page (also in headless Chromium), checked against the
published DeepSeek-V3.2 figures (GB200 NVFP4 on 4 GPUs meets E2E p50 ≤ 15 s up to c = 8, H200 FP8 on 8 GPUs
only c = 1: 16× the users per GPU)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from headless_chromium import Chromium, check_page, open_page

from pytest_llmperf import pairs
from pytest_llmperf.report.overlay import COLORS

SVG_NS = "{http://www.w3.org/2000/svg}"
E2E_SLO_MS = 15000.0
OUTPUT_LEN = 1600
# Made-up E2E p50 (ms) per concurrency, consistent with the published facts. GB200 NVFP4 (4 GPUs): meets 15 s up to
# c8, crossing at c12; H200 FP8 (8 GPUs): only c1, crossing at c1.5; H200 FP8 with MTP (8 GPUs): up to c4,
# crossing at c5 (13 s at c4, 21 s at c8).
GB200_E2E = {1: 5200.0, 2: 6400.0, 4: 8300.0, 8: 12000.0, 16: 18000.0, 32: 29000.0, 64: 52000.0}
H200_E2E = {1: 11000.0, 2: 19000.0, 4: 26000.0, 8: 40000.0, 16: 61000.0, 32: 98000.0, 64: 170000.0}
H200_MTP_E2E = {1: 7000.0, 2: 9500.0, 4: 13000.0, 8: 21000.0, 16: 33000.0, 32: 55000.0, 64: 96000.0}


def run_summary(concurrency: int, e2e_ms: float, gpus: int) -> dict[str, Any]:
    ttft = 0.06 * e2e_ms
    tpot = (e2e_ms - ttft) / (OUTPUT_LEN - 1)
    throughput = concurrency * OUTPUT_LEN / (e2e_ms / 1000)
    return {
        "completed": 10 * concurrency,
        "failed": 0,
        "median_ttft_ms": ttft,
        "median_tpot_ms": tpot,
        "median_e2el_ms": e2e_ms,
        "output_throughput": throughput,
        "output_throughput_per_gpu": throughput / gpus,
        "interactivity": 1000.0 / tpot,
        "gpu_count": gpus,
    }


def session_document(
    pair: str,
    e2e: dict[int, float],
    gpus: int,
    *,
    engine_version: str = "0.5.4",
    server_command_hash: str = "aaaa",
    workload: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``--llmperf-json`` document of one ShareGPT-shaped interactive sweep with the e2e_p50_ms=15000 SLO."""
    endpoint = {
        "url": "http://node:30000",
        "model": "deepseek-v3.2",
        "engine": "sglang",
        "engine_version": engine_version,
        "gpu_count": gpus,
    }
    hardware, _, precision = pair.partition("-")
    fingerprint = {
        "hardware": hardware,
        "precision": precision,
        "model": "deepseek-v3.2",
        "engine": "sglang",
        "engine_version": engine_version,
        "server_command_hash": server_command_hash,
    }
    results = []
    for c, value in e2e.items():
        run = run_summary(c, value, gpus)
        load = {
            "api": "completions",
            "dataset": "random",
            "input_len": 2400,
            "output_len": OUTPUT_LEN,
            "request_rate": "inf",
            "concurrency": c,
            "num_prompts": 10 * c,
            "seed": 0,
            "request_timeout_s": 600.0,
        }
        load.update(workload or {})
        results.append(
            {
                "nodeid": f"perf/test_dsv32.py::test_interactive[{c}]",
                "outcome": "passed",
                "workload": load,
                "summary": run,
                "runs": [run],
                "endpoint": endpoint,
                "fingerprint": fingerprint,
                "slos": [
                    {
                        "name": "e2e_p50_ms",
                        "limit": E2E_SLO_MS,
                        "kind": "max",
                        "unit": "ms",
                        "key": "median_e2el_ms",
                        "measured": value,
                        "passed": value <= E2E_SLO_MS,
                    }
                ],
                "slo_breached": False,
            }
        )
    return {"pair": pair, "endpoint": endpoint, "results": results}


def write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def three_documents(tmp_path: Path) -> list[Path]:
    return [
        write(tmp_path / "gb200-nvfp4.json", session_document("gb200x4-fp4", GB200_E2E, 4)),
        write(tmp_path / "h200-fp8.json", session_document("h200x8-fp8", H200_E2E, 8)),
        write(tmp_path / "h200-fp8-mtp.json", session_document("h200x8-fp8", H200_MTP_E2E, 8, server_command_hash="b")),
    ]


LABELS = ["GB200 NVFP4 MTP", "H200 FP8", "H200 FP8 MTP"]


def svgs(text: str, kind: str) -> list[ET.Element]:
    found = [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", text, flags=re.S)]
    return [s for s in found if s.get("data-plot") == kind]


def groups(svg: ET.Element, role: str) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG_NS}g") if role in (g.get("class") or "").split()]


def texts(svg: ET.Element, role: str) -> list[str]:
    return ["".join(t.itertext()) for g in groups(svg, role) for t in g.iter(f"{SVG_NS}text")]


def stroke_colors(group: ET.Element) -> set[str]:
    return {m.group(1) for p in group.iter() for m in [re.search(r"stroke: ?(#[0-9a-f]{6})", p.get("style", ""))] if m}


# -- the published figures, three configurations --------------------------------------------------------------------


def test_three_configurations_give_the_published_capacities_and_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = three_documents(tmp_path)
    out_json, out_html = tmp_path / "cmp.json", tmp_path / "overlay.html"
    argv = [str(p) for p in docs] + [a for label in LABELS for a in ("--label", label)]
    assert pairs.main([*argv, "--json", str(out_json), "--html", str(out_html)]) == 0
    lines = capsys.readouterr().out.splitlines()
    gb, h, mtp = LABELS
    assert lines[0] == f"capacity at SLO, {gb} vs {h}, {mtp}"
    assert lines[1] == "perf/test_dsv32.py::test_interactive (input_len=2400, output_len=1600)"
    assert lines[2] == f"  {gb}: e2e_p50_ms ≤ 15000: up to c≈12 (c8 meets it, c16 does not) · 3 users/GPU (4 GPUs)"
    assert lines[3] == f"  {h}: e2e_p50_ms ≤ 15000: up to c≈1.5 (c1 meets it, c2 does not) · 0.188 users/GPU (8 GPUs)"
    assert lines[4] == f"  {mtp}: e2e_p50_ms ≤ 15000: up to c≈5 (c4 meets it, c8 does not) · 0.625 users/GPU (8 GPUs)"
    assert lines[5:] == [
        f"  measured: {gb} serves 16× the users per GPU of {h}",  # 8/4 users per GPU over 1/8
        f"  interpolated: {gb} serves 16× the users per GPU of {h}",  # 12/4 over 1.5/8
        f"  measured: {gb} serves 4× the users per GPU of {mtp}",  # 8/4 over 4/8
        f"  interpolated: {gb} serves 4.8× the users per GPU of {mtp}",  # 12/4 over 5/8
    ]

    written = json.loads(out_json.read_text())
    assert (written["first"], written["second"], written["labels"]) == (gb, h, LABELS)
    rows = {row["against"]: row for row in written["comparisons"]}
    assert rows[h]["ratio_measured"]["ratio"] == pytest.approx(16.0)
    assert rows[h]["first"]["measured_concurrency"] == 8
    assert rows[h]["second"]["measured_concurrency"] == 1
    assert rows[mtp]["ratio_measured"]["ratio"] == pytest.approx(4.0)
    assert rows[mtp]["ratio_interpolated"]["ratio"] == pytest.approx(4.8)

    page = out_html.read_text(encoding="utf-8")
    assert page.count('<section class="sweep"') == 1
    assert "<script" not in page  # self-contained
    assert "http://node" not in page  # no endpoint URL shown
    assert str(tmp_path) not in page  # file names, not the paths they were read from
    (latency,) = svgs(page, "throughput-latency")
    (interactivity,) = svgs(page, "throughput-interactivity")
    for svg in (latency, interactivity):
        assert texts(svg, "legend-label") == LABELS
        assert texts(svg, "pt-label").count("c8") == 3  # every configuration's points, labelled by concurrency
        assert len(texts(svg, "mark-label")) == 3  # one capacity mark per configuration
    lines_drawn = groups(latency, "series-line")
    assert len(lines_drawn) == 3  # one curve per configuration
    assert [stroke_colors(g) for g in lines_drawn] == [{c} for c in COLORS[:3]]  # each in its own colour
    assert len(groups(interactivity, "front")) == 3  # each configuration's Pareto front
    # The capacity table: per configuration, the largest measured concurrency, users per GPU and the ratio.
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r'<tr data-slo="e2e_p50_ms".*?</tr>', page)]
    assert len(cells) == 3
    assert "c8" in cells[0]
    assert "16×" in cells[1]
    assert "4×" in cells[2]
    assert "4.8×" in cells[2]
    assert "0.125" in cells[1]  # measured users per GPU: 1/8
    assert "0.5" in cells[2]  # 4/8


def test_two_documents_print_as_before(tmp_path: Path) -> None:
    gb200, h200 = three_documents(tmp_path)[:2]
    done = subprocess.run(
        [sys.executable, "-m", "pytest_llmperf.pairs", str(gb200), str(h200)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # Default labels: the pair and the engine version.
    a, b = "gb200x4-fp4 · sglang 0.5.4", "h200x8-fp8 · sglang 0.5.4"
    assert lines[0] == f"capacity at SLO, {a} vs {b}"
    assert len(lines) == 6
    assert lines[2].startswith(f"  {a}: e2e_p50_ms ≤ 15000: up to c≈12")
    assert lines[4:] == [
        f"  measured: {a} serves 16× the users per GPU of {b}",
        f"  interpolated: {a} serves 16× the users per GPU of {b}",
    ]


def test_default_labels_tell_same_pair_documents_apart(tmp_path: Path) -> None:
    docs = three_documents(tmp_path)
    documents = [pairs.load_document(p) for p in docs]
    assert pairs.default_label(documents[0], docs[0]) == "gb200x4-fp4 · sglang 0.5.4"
    assert pairs._labels(documents, docs, None) == [
        "gb200x4-fp4 · sglang 0.5.4",
        "h200x8-fp8 · sglang 0.5.4 (h200-fp8.json)",
        "h200x8-fp8 · sglang 0.5.4 (h200-fp8-mtp.json)",
    ]
    bare: dict[str, Any] = {"results": []}
    assert pairs.default_label(bare, Path("runs/nightly.json")) == "nightly"


def test_every_slo_gets_a_capacity_row_and_the_tpot_limit_is_drawn(tmp_path: Path) -> None:
    docs = []
    for name, e2e, gpus in (("gb200x4-fp4", GB200_E2E, 4), ("h200x8-fp8", H200_E2E, 8)):
        document = session_document(name, e2e, gpus)
        for r in document["results"]:
            tpot = r["summary"]["median_tpot_ms"]
            r["slos"].append({"name": "tpot_p50_ms", "limit": 5.0, "kind": "max", "unit": "ms",
                              "key": "median_tpot_ms", "measured": tpot, "passed": tpot <= 5.0})  # fmt: skip
        docs.append(str(write(tmp_path / f"{name}.json", document)))
    page_file = tmp_path / "overlay.html"
    assert pairs.main([*docs, "--html", str(page_file)]) == 0
    page = page_file.read_text(encoding="utf-8")
    assert len(re.findall(r'<tr data-slo="tpot_p50_ms"', page)) == 2  # one row per configuration
    (interactivity,) = svgs(page, "throughput-interactivity")
    assert any(
        label.startswith("SLO tpot_p50_ms ≤ 5 (≥ 200 tok/s/user)") for label in texts(interactivity, "ref-label")
    )


# -- documents that must not be pooled -----------------------------------------------------------------------------


def test_a_document_mixing_configurations_in_one_sweep_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three sessions' results merged into one file would give one curve between them: refused, saying why."""
    old = session_document("h200x8-fp8", H200_E2E, 8, engine_version="0.5.3")
    new = session_document("h200x8-fp8", H200_MTP_E2E, 8, engine_version="0.5.4")
    merged = {**old, "results": old["results"] + new["results"]}
    gb200 = write(tmp_path / "gb200.json", session_document("gb200x4-fp4", GB200_E2E, 4))
    mixed = write(tmp_path / "merged.json", merged)
    assert pairs.main([str(gb200), str(mixed), "--html", str(tmp_path / "o.html")]) == 2
    err = capsys.readouterr().err
    assert "merged.json: sweep perf/test_dsv32.py::test_interactive holds results of 2 configurations" in err
    assert "engine_version: 0.5.3 vs 0.5.4" in err
    assert "pooled into one curve" in err
    assert not (tmp_path / "o.html").exists()
    # The same server command with another flag (MTP on) is another configuration too.
    other = session_document("h200x8-fp8", H200_MTP_E2E, 8, server_command_hash="mtp")
    merged = {**old, "results": session_document("h200x8-fp8", H200_E2E, 8)["results"] + other["results"]}
    assert pairs.main([str(gb200), str(write(mixed, merged))]) == 2
    assert "server_command_hash: aaaa vs mtp" in capsys.readouterr().err


def test_sweeps_match_without_load_neutral_fields_and_say_which_field_differs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gb200 = session_document("gb200x4-fp4", GB200_E2E, 4, workload={"dataset": "/data/sets/ShareGPT_V3.json"})
    h200 = session_document(
        "h200x8-fp8", H200_E2E, 8, workload={"dataset": "/home/ci/ShareGPT_V3.json", "request_timeout_s": 1800.0}
    )
    first, second = write(tmp_path / "a.json", gb200), write(tmp_path / "b.json", h200)
    assert pairs.main([str(first), str(second)]) == 0
    assert "serves 16× the users per GPU" in capsys.readouterr().out
    assert pairs.matching_workload({"dataset": "C:\\sets\\x.jsonl", "concurrency": 4, "request_timeout_s": 1}) == {
        "dataset": "x.jsonl"
    }

    short = session_document(
        "h200x8-fp8", H200_E2E, 8, workload={"output_len": 512, "dataset": "/data/sets/ShareGPT_V3.json"}
    )
    third = write(tmp_path / "c.json", short)
    assert pairs.main([str(first), str(third)]) == 1
    err = capsys.readouterr().err
    assert "can be compared" in err
    assert "perf/test_dsv32.py::test_interactive: the workloads differ in output_len 1600 vs 512" in err
    # With a third document that does match, the one that does not is named and the rest compared.
    assert pairs.main([str(first), str(third), str(second)]) == 0
    captured = capsys.readouterr()
    assert "output_len 1600 vs 512" in captured.err
    assert "16×" in captured.out


def test_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = three_documents(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        pairs.main([str(docs[0])])
    assert exit_info.value.code == 2
    assert "two session documents or more" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        pairs.main([str(docs[0]), str(docs[1]), "--label", "only one"])
    assert exit_info.value.code == 2
    assert "--label given 1 times for 2 documents" in capsys.readouterr().err


# -- the overlay page in a browser ----------------------------------------------------------------------------------


def test_overlay_page_in_chromium(browser: Chromium, tmp_path: Path) -> None:
    page_file = tmp_path / "overlay.html"
    argv = [str(p) for p in three_documents(tmp_path)] + [a for label in LABELS for a in ("--label", label)]
    assert pairs.main([*argv, "--html", str(page_file)]) == 0
    page = open_page(browser, page_file, tmp_path / "overlay.png")
    check_page(page, {"throughput-latency", "throughput-interactivity"})  # drawn, no label hides another
    assert page.facts["sweeps"] == 1
    assert page.facts["title"] == "pytest-llmperf · " + " vs ".join(LABELS)
    latency, interactivity = page.plots
    # Every configuration's seven points labelled cX and its capacity mark; the SLO line on the latency chart.
    assert latency["labels"] == 3 * 7 + 3 + 1
    assert interactivity["labels"] == 3 * 7 + 3
    assert page.screenshot.stat().st_size > 10_000


def test_a_document_from_before_the_later_workload_fields_matches_a_new_one() -> None:
    from pytest_llmperf.judge.baseline import LATER_FIELD_DEFAULTS
    from pytest_llmperf.pairs import matching_workload

    old = {"input_len": 2400, "output_len": 1600, "concurrency": 8, "dataset": "/data/a/sharegpt.json"}
    new = {**old, **LATER_FIELD_DEFAULTS, "dataset": "sharegpt.json"}
    assert matching_workload(old) == matching_workload(new)
    assert matching_workload({**new, "range_rule": "inferencemax"}) != matching_workload(old)
    assert matching_workload({**old, "trace": "/x/t.jsonl"}) == matching_workload({**old, "trace": "t.jsonl"})
