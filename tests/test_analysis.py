"""analysis/ on synthetic study directories with known per-epoch values.

Expected numbers are written out by hand from the curves below, not recomputed with the code under test.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import stats as sps

from analysis import figures
from analysis.__main__ import main
from analysis.load import read_study
from analysis.report import build_report
from analysis.stats import summarize
from analysis.status import format_status, status_rows
from rundir import METRICS_SCHEMA

MODEL = "vit_base_patch16_224"
GROUPED = [{"name": "grouped", "params": {"group_size": 2, "scale": 0.7071}}]
SHALLOW = [{"name": "shallow", "params": {"keep_ratio": 0.5, "select": "first"}}]
BASELINE = [{"name": "baseline", "params": {}}]
# ViT-B/16 accounting: params, mlp_params, unique_mlps, mlp_hidden, gflops, gmacs
ARCH = {
    "baseline": (86_567_656, 56_669_184, 12, 3072, 16.9, 17.58),
    "grouped": (58_228_456, 28_334_592, 6, 3072, 16.9, 17.58),
    "shallow": (58_229_992, 28_339_200, 12, 1536, 11.3, 12.0),
}
EPOCHS = 6
# top-1 per epoch of each (condition, seed); top-5 = top-1 + 30, EMA top-1 = top-1 + 0.5.
CURVES = {
    ("baseline", 0): [10.0, 20.0, 30.0, 42.0, 41.0, 40.0],   # peak 42 @4, final 40, Δ 2
    ("baseline", 1): [11.0, 22.0, 33.0, 40.0, 44.0, 41.0],   # peak 44 @5, final 41, Δ 3
    ("grouped", 0): [12.0, 24.0, 36.0, 40.0, 42.0, 42.0],    # peak 42 @5 (first reach), final 42, Δ 0
    ("grouped", 1): [12.0, 25.0, 37.0, 41.0, 43.0, 44.5],    # peak 44.5 @6, final 44.5, Δ 0
    ("shallow", 0): [9.0, 19.0, 29.0, 39.0, 43.0, 41.0],     # peak 43 @5, final 41, Δ 2
    ("shallow", 1): [9.0, 19.0, 29.0, 39.0, 42.5, 42.5],     # peak 42.5 @5, final 42.5, Δ 0
    ("shallow", 2): [9.0, 18.0, 28.0],                       # incomplete: 3 of 6 epochs
}
TRAIN_IMG_S = {"baseline": [90.0, 100.0, 100.0, 101.0, 99.0, 100.0],  # median 100
               "grouped": [95.0, 100.0, 101.0, 99.0, 100.0, 100.0],   # median 100
               "shallow": [120.0, 140.0, 141.0, 139.0, 140.0, 140.0]}  # median 140
SPECS = {"baseline": BASELINE, "grouped": GROUPED, "shallow": SHALLOW}


def write_run(study: Path, run_id: str, condition: str, seed: int, top1: list[float], *,
              strategy_params=None, ablation: dict | None = None, model: str = MODEL,
              epochs_total: int = EPOCHS, arch=None, img_s=None, state: str | None = None,
              strategy: str | None = None) -> Path:
    run = study / run_id
    run.mkdir(parents=True)
    strategy = strategy or condition.split("[")[0]
    params, mlp_params, unique, hidden, gflops, *gmacs = arch or ARCH[strategy]
    img_s = img_s or TRAIN_IMG_S[strategy]
    rows = [{
        "study": study.name, "run_id": run_id, "condition": condition, "strategy": strategy,
        "strategy_params": json.dumps(SPECS[strategy] if strategy_params is None else strategy_params),
        "ablation": json.dumps(ablation or {}), "model": model, "seed": seed, "epoch": e + 1,
        "epochs_total": epochs_total, "lr": 1e-3, "train_loss": 5.0 - e * 0.1,
        "top1": v, "top5": v + 30.0, "ema_top1": v + 0.5, "ema_top5": v + 30.5,
        "params": params, "mlp_params": mlp_params, "unique_mlps": unique, "mlp_hidden": hidden,
        "gflops": gflops, "gmacs": gmacs[0] if gmacs else None, "train_img_s": img_s[e], "epoch_s": 36.0, "wall_time": 1.7e9 + 36.0 * (e + 1),
        "host": "node1", "resumed_from": None,
    } for e, v in enumerate(top1)]
    pq.write_table(pa.Table.from_pylist(rows, schema=METRICS_SCHEMA), run / "metrics.parquet")
    # The architecture the run recorded (embed_dim of ViT-B/16 or -Ti/16): where the expansion ratio comes from.
    arch = {"depth": 12, "num_heads": 12, "mlp_hidden": hidden, "embed_dim": 192 if "tiny" in model else 768}
    (run / "spec.json").write_text(json.dumps({"format": 1, "spec": {"run_id": run_id}, "architecture": arch}))
    state = state or ("finished" if len(top1) == epochs_total else "running")
    (run / "status.json").write_text(json.dumps({"state": state, "epoch": len(top1), "epochs_total": epochs_total,
                                                 "error": None, "updated": 1.7e9 + 36.0 * len(top1)}))
    return run


@pytest.fixture(scope="module")
def paper_study(tmp_path_factory) -> Path:
    """Paper conditions × 2 seeds, one incomplete shallow run, one run with a corrupt metrics file."""
    study = tmp_path_factory.mktemp("studies") / "paper-study"
    for (cond, seed), curve in CURVES.items():
        write_run(study, f"{cond}-s{seed}", cond, seed, curve)
    corrupt = write_run(study, "grouped-s2", "grouped", 2, [1.0] * EPOCHS)
    (corrupt / "metrics.parquet").write_bytes(b"PAR1 this is not parquet")
    return study


@pytest.fixture(scope="module")
def paper_report(paper_study, tmp_path_factory):
    return build_report(paper_study, tmp_path_factory.mktemp("out") / "report")


def _row(summary: pd.DataFrame, strategy: str) -> pd.Series:
    return summary[summary["strategy"] == strategy].iloc[0]


def assert_contains(text: str, *parts: str) -> None:
    """Every part occurs in `text`; a failure lists each one that does not."""
    missing = [part for part in parts if part not in text]
    assert not missing, f"not in the text: {missing}"


def test_per_condition_statistics(paper_report):
    s = paper_report.summary
    assert list(s["name"]) == ["Baseline", "GroupedMLP", "ShallowMLP"]
    b, g, sh = _row(s, "baseline"), _row(s, "grouped"), _row(s, "shallow")
    assert b["final_top1_mean"] == pytest.approx(40.5)
    assert b["final_top1_std"] == pytest.approx(math.sqrt(0.5))
    assert b["peak_epoch_mean"] == pytest.approx(4.5)
    assert b["peak_epoch_std"] == pytest.approx(math.sqrt(0.5))
    assert b["delta_pf_mean"] == pytest.approx(2.5)
    assert b["final_top5_mean"] == pytest.approx(70.5)
    assert b["final_ema_top1_mean"] == pytest.approx(41.0)
    assert g["final_top1_mean"] == pytest.approx(43.25)
    assert g["final_top1_std"] == pytest.approx(math.sqrt(2 * 1.25 ** 2))
    assert g["peak_epoch_mean"] == pytest.approx(5.5)
    assert g["delta_pf_mean"] == pytest.approx(0.0) and g["delta_pf_std"] == pytest.approx(0.0)
    # the incomplete seed-2 run is counted but left out of the mean
    assert sh["n_seeds"] == 2 and sh["seeds"] == "0,1"
    assert sh["runs_complete"] == 2 and sh["runs_incomplete"] == 1
    assert sh["final_top1_mean"] == pytest.approx(41.75)
    assert sh["delta_pf_mean"] == pytest.approx(1.0)
    assert sh["peak_epoch_mean"] == pytest.approx(5.0) and sh["peak_epoch_std"] == pytest.approx(0.0)
    # the corrupt grouped-s2 run is not counted at all
    assert g["n_seeds"] == 2 and g["runs_complete"] == 2 and g["runs_incomplete"] == 0
    assert sh["expansion_ratio"] == pytest.approx(2.0) and b["expansion_ratio"] == pytest.approx(4.0)
    # throughput falls back to training img/s (median over epochs)
    assert b["throughput_source"] == "train" and b["throughput_img_s"] == pytest.approx(100.0)
    assert sh["speedup"] == pytest.approx(1.4)
    assert sh["mac_ratio"] == pytest.approx(17.58 / 12.0)  # all matmuls, as jobs bench counts


def test_paired_ttest_equals_scipy(paper_report):
    s = paper_report.summary
    g, sh = _row(s, "grouped"), _row(s, "shallow")
    expected = sps.ttest_rel([42.0, 44.5], [40.0, 41.0])
    assert g["p_final_top1"] == pytest.approx(expected.pvalue, rel=1e-12)
    assert g["t_final_top1"] == pytest.approx(expected.statistic, rel=1e-12)
    assert g["diff_final_top1"] == pytest.approx(2.75)
    assert g["n_paired"] == 2 and g["baseline"] == "Baseline"
    assert sh["p_final_top1"] == pytest.approx(sps.ttest_rel([41.0, 42.5], [40.0, 41.0]).pvalue, rel=1e-12)
    assert sh["paired_seeds"] == "0,1"
    assert math.isnan(_row(s, "baseline")["p_final_top1"])


def test_runs_parquet_marks_incomplete_and_corrupt(paper_report):
    runs = pd.read_parquet(paper_report.files["runs"])
    assert len(runs) == 8
    r = runs.set_index("run_id")
    assert not r.loc["shallow-s2", "complete"] and r.loc["shallow-s2", "state"] == "unfinished"
    assert r.loc["shallow-s2", "epochs_done"] == 3
    assert not r.loc["grouped-s2", "usable"]
    assert "not readable parquet" in r.loc["grouped-s2", "problem"]
    assert r.loc["baseline-s1", "peak_epoch"] == 5 and r.loc["baseline-s1", "delta_pf"] == pytest.approx(3.0)
    summary = pd.read_parquet(paper_report.files["summary"])
    csv = pd.read_csv(paper_report.files["summary_csv"])
    assert len(summary) == len(csv) == 3
    assert csv["final_top1_mean"].tolist() == pytest.approx(summary["final_top1_mean"].tolist())


def test_table_cells(paper_report):
    md = (paper_report.out_dir / "table.md").read_text()
    assert ("| Model | Params | Top-1 Acc (%) | Top-5 Acc (%) | Peak Epoch | Δ(P→F) (%) | Throughput (img/s) |"
            in md)
    assert_contains(
        md,
        "| Baseline | 86.6M | 40.50±0.71 | 70.50±0.71 | 4±1 | 2.50±0.71 | 100±0 (train) |",
        "| GroupedMLP | 58.2M | 43.25±1.77 | 73.25±1.77 | 6±1 | 0.00±0.00 | 100±0 (train) |",
        "| ShallowMLP | 58.2M | 41.75±1.06 | 71.75±1.06 | 5±0 | 1.00±1.41 | 140±0 (train) |",
        "| Model | Params | MLP Params | Unique MLPs | GFLOPs | Expansion Ratio |",
        "| Baseline | 86.6M | 56.7M | 12 | 16.9 | 4.0 |",
        "| GroupedMLP | 58.2M | 28.3M | 6 | 16.9 | 4.0 |",
        "| ShallowMLP | 58.2M | 28.3M | 12 | 11.3 | 2.0 |",
    )
    tex = (paper_report.out_dir / "table.tex").read_text()
    assert r"Baseline & 86.6M & 40.50$\pm$0.71 & 70.50$\pm$0.71 & 4$\pm$1 & 2.50$\pm$0.71 & 100$\pm$0 (train) \\" \
        in tex
    assert r"$\Delta$(P$\rightarrow$F) (\%)" in tex
    assert tex.count(r"\begin{tabular}") == 3  # results, EMA results, architecture


def test_report_lists_problems_and_paper_comparison(paper_report):
    text = paper_report.report_md.read_text()
    assert_contains(
        text,
        "`grouped-s2`: metrics.parquet is not readable parquet",
        "`shallow-s2`: 3/6 epochs, state unfinished",
        "## This study vs the paper",
        "| Baseline | 86.6M / 86.6M | 81.05±0.11 | 40.50±0.71 |",
        "GroupedMLP** vs Baseline: top-1 higher by 2.75 points",
        "| GroupedMLP Δ(P→F) below Baseline | 0.06 vs 0.47 | 0.00 vs 2.50 | yes |",
        "| ShallowMLP throughput above Baseline | 1,411 vs 1,020 | 140 vs 100 (train) | yes |",
    )
    p = sps.ttest_rel([42.0, 44.5], [40.0, 41.0]).pvalue
    assert f"p = {p:.3g}" in text
    for png in ("top1_curves.png", "params_vs_top1.png", "throughput.png"):
        assert f"]({png})" in text


def test_figures_render(paper_report):
    pngs = sorted(paper_report.out_dir.glob("*.png"))
    assert {p.name for p in pngs} >= {"top1_curves.png", "params_vs_top1.png", "throughput.png"}
    w, h = figures.FIGSIZE[0] * figures.DPI, figures.FIGSIZE[1] * figures.DPI
    for png in pngs:
        with Image.open(png) as im:
            im.load()
            assert im.size == (w, h)
            # not a blank canvas: plotted lines/bars give many distinct colours
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 50


def test_too_few_matched_seeds_is_a_note_not_a_crash(tmp_path):
    study = tmp_path / "one-seed"
    write_run(study, "baseline-s0", "baseline", 0, CURVES[("baseline", 0)])
    write_run(study, "grouped-s0", "grouped", 0, CURVES[("grouped", 0)])
    write_run(study, "grouped-s1", "grouped", 1, CURVES[("grouped", 1)])
    rep = build_report(study, tmp_path / "out")
    g = _row(rep.summary, "grouped")
    assert g["n_paired"] == 1 and math.isnan(g["p_final_top1"])
    assert "only 1 matched seed" in g["test_note"]
    assert "not tested — only 1 matched seed among" in rep.report_md.read_text()
    # a single seed has no std: the mean alone is printed
    assert "| Baseline | 86.6M | 40.00 | 70.00 | 4 | 2.00 |" in (tmp_path / "out" / "table.md").read_text()


def test_ablation_axis_bench_and_malformed_runs(tmp_path):
    """A keep_ratio grid as jobs.study writes it: one condition label, the value in `ablation`."""
    study = tmp_path / "ablation"
    finals = {0.25: (30.0, 31.0), 0.5: (33.0, 35.0), 0.75: (36.0, 36.5)}
    tiny_params = {0.25: 3_000_000, 0.5: 4_000_000, 0.75: 5_000_000, None: 5_717_416}
    for ratio, vals in finals.items():
        spec = [{"name": "shallow", "params": {"keep_ratio": ratio}}]
        for seed, v in enumerate(vals):
            write_run(study, f"shallow-keep_ratio={ratio}-s{seed}", "shallow", seed, [v - 5, v - 1, v],
                      strategy_params=spec, ablation={"strategy.shallow.keep_ratio": ratio},
                      model="vit_tiny_patch16_224", epochs_total=3, img_s=[50.0, 50.0, 50.0],
                      arch=(tiny_params[ratio], 3_550_000, 12, int(768 * ratio), 2.5 * (0.5 + ratio)))
    for seed in (0, 1):
        write_run(study, f"baseline-s{seed}", "baseline", seed, [25.0, 30.0, 32.0], model="vit_tiny_patch16_224",
                  strategy_params=[], epochs_total=3, arch=(tiny_params[None], 3_550_000, 12, 768, 2.5),
                  img_s=[40.0, 40.0, 40.0])
    # missing required columns, and a run folder with only a spec (never started)
    bad = study / "bad-columns"
    bad.mkdir()
    pq.write_table(pa.table({"epoch": [1], "top1": [1.0]}), bad / "metrics.parquet")
    (study / "not-started").mkdir()
    (study / "not-started" / "spec.json").write_text(json.dumps({"format": 1, "spec": {"condition": "shallow", "seed": 3}}))
    (study / "runs.json").write_text(json.dumps({"planned-s9": {"condition": "shallow", "ablation": {}, "seed": 9}}))
    (study / "bench.json").write_text(json.dumps({"model": "vit_tiny_patch16_224", "device": "cuda",
                                                  "device_name": "H100", "results": [
        {"strategy": "baseline", "img_s": 4000.0, "ratio": 1.0, "mac_ratio": 1.0, "params": tiny_params[None]},
        {"strategy": "shallow:keep_ratio=0.5", "img_s": 5200.0, "ratio": 1.3, "mac_ratio": 1.45,
         "params": tiny_params[0.5]},
        {"strategy": "shallow", "img_s": 9999.0, "ratio": 2.5, "mac_ratio": 2.5}]}))
    rep = build_report(study, tmp_path / "out")
    s = rep.summary
    assert list(s["name"]) == ["Baseline", "ShallowMLP [keep_ratio=0.25]", "ShallowMLP [keep_ratio=0.5]",
                               "ShallowMLP [keep_ratio=0.75]"]
    k = s.set_index("name")
    half = k.loc["ShallowMLP [keep_ratio=0.5]"]
    assert half["final_top1_mean"] == pytest.approx(34.0)
    assert half["throughput_img_s"] == 5200.0 and half["throughput_source"] == "bench (H100)"
    assert half["mac_ratio"] == pytest.approx(1.45) and half["speedup"] == pytest.approx(1.3)
    # a bare "shallow" entry fits all three widths, so it stands for none: training img/s instead
    quarter = k.loc["ShallowMLP [keep_ratio=0.25]"]
    assert quarter["throughput_source"] == "train" and quarter["throughput_img_s"] == 50.0
    assert quarter["mac_ratio"] == pytest.approx(2.5 / (2.5 * 0.75))  # no gmacs recorded: gflops
    assert quarter["p_final_top1"] == pytest.approx(sps.ttest_rel([30.0, 31.0], [32.0, 32.0]).pvalue)
    assert quarter["baseline"] == "Baseline"
    assert (tmp_path / "out" / "ablation_strategy_shallow_keep_ratio.png").exists()
    assert list(figures.ablation_axes(s)) == ["strategy.shallow.keep_ratio"]  # not again as shallow.keep_ratio
    text = rep.report_md.read_text()
    assert "`bad-columns`: metrics.parquet lacks required columns model, seed, epochs_total" in text
    assert "`not-started`: no metrics.parquet" in text
    assert "`planned-s9`: not started (planned in runs.json" in text
    assert "This study vs the paper" not in text  # not ViT-B/16
    assert "| Baseline | 5.7M | 32.00±0.00 | 62.00±0.00 | 3±0 | 0.00±0.00 | 4,000 |" in \
        (tmp_path / "out" / "table.md").read_text()
    with Image.open(tmp_path / "out" / "ablation_strategy_shallow_keep_ratio.png") as im:
        assert im.size == (figures.FIGSIZE[0] * figures.DPI, figures.FIGSIZE[1] * figures.DPI)
    rows = {r["run"]: r for r in status_rows(study)}
    assert rows["planned-s9"]["state"] == "pending" and rows["planned-s9"]["seed"] == "9"
    assert rows["not-started"]["condition"] == "shallow" and rows["not-started"]["seed"] == "3"


def test_include_incomplete_and_conditions_told_apart_by_label(paper_study, tmp_path):
    rep = build_report(paper_study, tmp_path / "all", include_incomplete=True)
    sh = _row(rep.summary, "shallow")
    assert sh["n_seeds"] == 3 and sh["final_top1_mean"] == pytest.approx((41.0 + 42.5 + 28.0) / 3)
    # same strategies and ablation, different run-spec overrides: only the label tells them apart
    study = tmp_path / "labels"
    for seed in (0, 1):
        write_run(study, f"baseline-s{seed}", "baseline", seed, CURVES[("baseline", seed)], strategy_params=[])
        write_run(study, f"baseline_lowlr-s{seed}", "baseline_lowlr", seed, [5.0] * EPOCHS, strategy_params=[],
                  strategy="baseline")
        write_run(study, f"grouped-s{seed}", "grouped", seed, CURVES[("grouped", seed)])
    s = build_report(study, tmp_path / "labels-out").summary.set_index("name")
    assert s.loc["baseline_lowlr", "final_top1_mean"] == 5.0 and s.loc["Baseline", "final_top1_mean"] == 40.5
    assert s.loc["GroupedMLP", "baseline"] == "Baseline"
    assert s.loc["GroupedMLP", "diff_final_top1"] == pytest.approx(2.75)


def test_resumed_duplicate_epochs_use_later_rows(tmp_path):
    study = tmp_path / "resumed"
    run = write_run(study, "baseline-s0", "baseline", 0, [10.0, 20.0, 30.0, 40.0], epochs_total=4)
    t = pq.read_table(run / "metrics.parquet").to_pylist()
    # crashed after epoch 3, resumed from the epoch-2 checkpoint: epoch 3 is written twice
    redo = dict(t[2], top1=31.0, resumed_from=2)
    rows = t[:3] + [redo] + [dict(t[3], resumed_from=2)]
    pq.write_table(pa.Table.from_pylist(rows, schema=METRICS_SCHEMA), run / "metrics.parquet")
    study_obj = read_study(study)
    runs, _ = summarize(study_obj)
    assert study_obj.metrics.loc[study_obj.metrics["epoch"] == 3, "top1"].tolist() == [31.0]
    assert bool(runs.loc[0, "resumed"])
    assert any("epochs 3 recorded more than once" in p.reason for p in study_obj.problems)


def test_malformed_runs_each_get_a_reason(tmp_path):
    study = tmp_path / "malformed"
    write_run(study, "dict-spec", "baseline", 0, [1.0, 2.0], strategy_params={"name": "x"}, epochs_total=2)
    mixed = write_run(study, "mixed-seeds", "baseline", 0, [1.0, 2.0], epochs_total=2)
    rows = pq.read_table(mixed / "metrics.parquet").to_pylist()
    rows[1]["seed"] = 7
    pq.write_table(pa.Table.from_pylist(rows, schema=METRICS_SCHEMA), mixed / "metrics.parquet")
    bad_status = write_run(study, "bad-status", "baseline", 0, [1.0, 2.0], epochs_total=2)
    (bad_status / "status.json").write_text("{not json")
    st = read_study(study)
    reasons = {p.run: (p.reason, p.excluded) for p in st.problems}
    assert reasons["dict-spec"] == ('metrics.parquet column strategy_params must hold a JSON list of '
                                    '{"name", "params"}, found {"name": "x"}', True)
    assert reasons["mixed-seeds"][0].startswith("metrics.parquet mixes several values of seed (0, 7)")
    assert reasons["bad-status"][0].startswith("status.json unreadable (JSONDecodeError")
    assert reasons["bad-status"][1] is False  # its metrics are still used
    assert [r.run_id for r in st.runs if r.usable] == ["bad-status"]


def test_status_view_and_cli(paper_study, tmp_path, capsys):
    rows = {r["run"]: r for r in status_rows(paper_study, now=1.7e9 + 36.0 * 6 + 60)}
    assert rows["shallow-s2"]["state"] == "unfinished" and rows["shallow-s2"]["epochs"] == "3/6"
    assert rows["shallow-s2"]["last top-1"] == "28.00"
    assert rows["baseline-s0"]["state"] == "finished" and rows["baseline-s0"]["updated"] == "60s ago"
    assert "not readable parquet" in rows["grouped-s2"]["note"]
    text = format_status(list(rows.values()), paper_study)
    assert "8 runs:" in text and "6 finished" in text
    assert main(["status", str(paper_study)]) == 0
    assert "shallow-s2" in capsys.readouterr().out
    # the CLI, with torch and ray made unimportable: the analysis reads files only
    blocker = tmp_path / "block"
    blocker.mkdir()
    for mod in ("torch", "ray"):
        (blocker / f"{mod}.py").write_text(f"raise ImportError('analysis must not import {mod}')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(Path(__file__).parents[1])])}
    out = subprocess.run([sys.executable, "-m", "analysis", "report", str(paper_study), "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r" / "report.md").exists() and "grouped-s2" in out.stderr


def test_status_reads_few_columns_without_pandas(tmp_path):
    """`analysis status` is the 500-run view: no pandas, and the same state and top-1 as the report's reader."""
    study = tmp_path / "light"
    write_run(study, "baseline-s0", "baseline", 0, [10.0, 20.0, 30.0, 40.0], epochs_total=4)
    typed = write_run(study, "bad-type", "baseline", 1, [1.0, 2.0], epochs_total=2)
    pq.write_table(pa.table({**{c: pq.read_table(typed / "metrics.parquet").column(c)
                                for c in ("model", "seed", "epoch", "epochs_total")},
                             "top1": ["x", "y"]}), typed / "metrics.parquet")
    status = {r["run"]: r for r in status_rows(study)}
    assert (status["baseline-s0"]["state"], status["baseline-s0"]["best top-1"]) == ("finished", "40.00")
    write_run(study, "resumed-s1", "baseline", 1, [10.0, 20.0, 30.0], epochs_total=3)
    t = pq.read_table(study / "resumed-s1" / "metrics.parquet").to_pylist()
    # resumed: epoch 2 written twice, the later row (20.0) counts, not the earlier 99.0
    pq.write_table(pa.Table.from_pylist(t[:1] + [dict(t[1], top1=99.0)] + t[1:], schema=METRICS_SCHEMA),
                   study / "resumed-s1" / "metrics.parquet")
    status = {r["run"]: r for r in status_rows(study)}
    assert status["resumed-s1"]["best top-1"] == "30.00" and status["resumed-s1"]["last top-1"] == "30.00"
    assert status["bad-type"]["state"] == "blocked" and "column top1 has type string" in status["bad-type"]["note"]
    report_states = {r.run_id: r.state for r in read_study(study).runs}
    assert {k: v["state"] for k, v in status.items()} == report_states
    blocker = tmp_path / "block"
    blocker.mkdir()
    for mod in ("pandas", "scipy", "matplotlib"):
        (blocker / f"{mod}.py").write_text(f"raise ImportError('analysis status must not import {mod}')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(Path(__file__).parents[1])])}
    out = subprocess.run([sys.executable, "-m", "analysis", "status", str(study)], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert "3 runs: 2 finished, 1 blocked" in out.stdout, out.stdout
