"""`python -m analysis report STUDY_DIR --out OUT_DIR`: summary files, tables, figures and report.md."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from analysis import figures, layer_stats, paper, recovery, tables, tuning
from analysis.load import Study, read_study
from analysis.stats import ALPHA, summarize


@dataclass
class Report:
    out_dir: Path
    study: Study
    runs: pd.DataFrame
    summary: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)   # what was written, by role
    stages: list[str] = field(default_factory=list)          # the stage graph, one line per condition
    recovery: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per recovered run

    @property
    def report_md(self) -> Path:
        return self.files["report"]


def _write_frames(runs: pd.DataFrame, summary: pd.DataFrame, out: Path) -> dict[str, Path]:
    files = {"runs": out / "runs.parquet", "summary": out / "summary.parquet", "summary_csv": out / "summary.csv"}
    runs.to_parquet(files["runs"], index=False)
    summary.to_parquet(files["summary"], index=False)
    summary.to_csv(files["summary_csv"], index=False)
    return files


def _included_metrics(study: Study, runs: pd.DataFrame, include_incomplete: bool) -> pd.DataFrame:
    use = runs[runs["usable"] & (runs["complete"] | include_incomplete)]
    return study.metrics[study.metrics["run_id"].isin(use["run_id"])]


def _figures(report: Report, include_incomplete: bool) -> dict[str, Path]:
    s, out = report.summary, report.out_dir
    files = {}
    metrics = _included_metrics(report.study, report.runs, include_incomplete)
    if len(metrics):
        files["fig_curves"] = figures.curves(metrics, report.runs, s, out / "top1_curves.png")
    if s["final_top1_mean"].notna().any():
        files["fig_pareto"] = figures.pareto(s, out / "params_vs_top1.png")
    if s["throughput_img_s"].notna().any():
        files["fig_throughput"] = figures.throughput(s, out / "throughput.png")
    for axis, values in figures.ablation_axes(s).items():
        files[f"fig_ablation:{axis}"] = figures.ablation(s, axis, values, out / figures.axis_filename(axis))
    return files


def _significance_text(summary: pd.DataFrame) -> list[str]:
    lines = []
    for _, r in summary[~summary["is_baseline"]].iterrows():
        base = r["baseline"]
        if r["test_note"] and not math.isfinite(r["p_final_top1"]):
            against = f" vs {base}" if base else ""
            lines.append(f"- **{r['name']}**{against}: not tested — {r['test_note']}.")
            continue
        d, p, n = r["diff_final_top1"], r["p_final_top1"], int(r["n_paired"])
        verdict = "significant" if p < ALPHA else "not significant"
        lines.append(
            f"- **{r['name']}** vs {base}: top-1 {'higher' if d > 0 else 'lower'} by {abs(d):.2f} points on "
            f"average over n = {n} matched seeds ({r['paired_seeds']}); paired t-test p = {p:.3g} "
            f"({verdict} at α = {ALPHA}). Top-5: {r['diff_final_top5']:+.2f} points, p = {r['p_final_top5']:.3g}."
        )
    return lines or ["- No condition has a baseline of the same model to compare with."]


def _runs_markdown(runs: pd.DataFrame) -> str:
    header = ["Run", "Condition", "Seed", "Epochs", "State", "Final top-1", "Peak top-1 (epoch)", "Δ(P→F)"]
    rows = []
    for _, r in runs.iterrows():
        if not r["usable"]:
            continue
        rows.append([
            r["run_id"], str(r["condition"]), str(int(r["seed"])),
            f"{int(r['epochs_done'])}/{int(r['epochs_total'])}" + ("" if r["complete"] else " (incomplete)"),
            r["state"], tables.fmt_num(r["final_top1"], 2),
            f"{tables.fmt_num(r['peak_top1'], 2)} ({tables.fmt_num(r['peak_epoch'], 0)})",
            tables.fmt_num(r["delta_pf"], 2),
        ])
    return tables.markdown(header, rows)


def _figure_caption(role: str) -> str:
    if role.startswith("fig_ablation:"):
        return f"Ablation over {role.split(':', 1)[1]}"
    return {"fig_curves": "Top-1 vs epoch", "fig_pareto": "Parameters vs top-1",
            "fig_throughput": "Throughput and the MAC-ratio bound"}[role]


def _report_markdown(rep: Report, include_incomplete: bool) -> str:
    st, runs, s = rep.study, rep.runs, rep.summary
    usable = runs[runs["usable"]]
    n_incomplete = int((~usable["complete"]).sum())
    excluded = [p for p in st.problems if p.excluded]
    warned = [p for p in st.problems if not p.excluded]
    lines = [
        f"# Study report: {st.name}", "",
        f"Source: `{st.root}` — {len(runs)} run folders, {len(usable)} with usable metrics "
        f"({len(usable) - n_incomplete} complete, {n_incomplete} incomplete), {len(excluded)} not usable; "
        f"{len(s)} conditions. Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
        ("Incomplete runs are included in the statistics (--include-incomplete)." if include_incomplete else
         "Statistics use complete runs only (epoch reached epochs_total); incomplete runs are listed below."),
        "",
    ]
    if len(usable) and not include_incomplete and not usable["complete"].any():
        lines += ["**No run is complete yet**: the tables are empty. `python -m analysis report "
                  f"{st.root} --include-incomplete` gives provisional numbers from the epochs done so far.", ""]
    if len(s):
        ema = bool(s["final_ema_top1_mean"].notna().any())
        lines += ["## Tables", "", tables.tables_markdown(s, ema),
                  "Also as LaTeX in `table.tex`; one row per condition in `summary.csv` / `summary.parquet`, "
                  "one row per run in `runs.parquet`.", ""]
        lines += ["## Significance vs baseline", "",
                  "Paired t-test (scipy.stats.ttest_rel) of final top-1 over seeds present in both the "
                  "condition and its model's baseline.", "", *_significance_text(s), ""]
        for model, pairs in paper.match(s).items():
            if paper.is_paper_model(model):
                lines += ["## This study vs the paper", "", paper.comparison_markdown(pairs), ""]
            lines += [f"## The paper's findings on this study ({model})", "",
                      "Means over seeds; the paper's numbers are ViT-B/16 on ImageNet-1k, 300 epochs. "
                      "A 'no' on a short schedule or small data is a result, not an error.", "",
                      paper.claims_markdown(pairs), ""]
    figs = {k: v for k, v in rep.files.items() if k.startswith("fig_")}
    if figs:
        lines += ["## Figures", ""]
        for role, path in figs.items():
            lines += [f"### {_figure_caption(role)}", "", f"![{_figure_caption(role)}]({path.name})", ""]
    if len(rep.stages) > 1:
        lines += ["## Stages", "", "Conditions and the conditions they start from or learn from (`run:`):", "",
                  "```", *rep.stages, "```", ""]
    if len(rep.recovery):
        lines += ["## Recovery", "", "Per seed: the teacher (the model the run was derived from), the reduced model "
                  "as built (epoch 0), after recovery, the share of the teacher's top-1 kept, and the reduction in "
                  "parameters and GFLOPs.", "", recovery.recovery_markdown(rep.recovery), ""]
        if "recovery_fig" in rep.files:
            lines += ["![Recovery](recovery_curves.png)", ""]
    lines += ["## Runs", "", _runs_markdown(runs) if len(usable) else "No run has usable metrics.", ""]
    if n_incomplete:
        lines += ["### Incomplete runs", ""]
        for _, r in usable[~usable["complete"]].iterrows():
            lines.append(f"- `{r['run_id']}`: {int(r['epochs_done'])}/{int(r['epochs_total'])} epochs, "
                         f"state {r['state']}.")
        lines.append("")
    if excluded or warned:
        lines += ["## Problems", ""]
        if excluded:
            lines += ["Runs left out of every table and figure:", ""]
            lines += [f"- `{p.run}`: {p.reason}" for p in excluded] + [""]
        if warned:
            lines += ["Warnings (the run is still used):", ""]
            lines += [f"- `{p.run}`: {p.reason}" for p in warned] + [""]
    return "\n".join(lines)


def build_report(study_dir: str | Path, out_dir: str | Path, include_incomplete: bool = False) -> Report:
    """Load STUDY_DIR and write every output into OUT_DIR (created if needed). Returns what was written."""
    study = read_study(study_dir)
    runs, summary = summarize(study, include_incomplete)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = {run.run_id: run.record.spec for run in study.runs if run.record and run.record.spec}
    runs = recovery.add_source_columns(runs, specs)
    deps, stages = recovery.study_graph(Path(study_dir), specs)
    rep = Report(out_dir=out, study=study, runs=runs, summary=summary, stages=stages,
                 recovery=recovery.recovery_rows(runs, deps))
    if len(rep.recovery):
        rep.recovery.to_csv(out / "recovery.csv", index=False)
        rep.files["recovery_csv"] = out / "recovery.csv"
        rep.files["recovery_fig"] = recovery.recovery_figure(rep.recovery, study.metrics, out / "recovery_curves.png")
    rep.files.update(_write_frames(runs, summary, out))
    if len(summary):
        ema = bool(summary["final_ema_top1_mean"].notna().any())
        (out / "table.md").write_text(tables.tables_markdown(summary, ema))
        (out / "table.tex").write_text(tables.tables_latex(summary, ema))
        rep.files["table_md"], rep.files["table_tex"] = out / "table.md", out / "table.tex"
        rep.files.update(_figures(rep, include_incomplete))
    rep.files["report"] = out / "report.md"
    used = set(runs.loc[runs["usable"] & (runs["complete"] | include_incomplete), "run_id"])
    tuned, files = tuning.report_section(study.root, runs, out, include_incomplete)
    rep.files.update(files)
    stability, files = layer_stats.report_section(study.root, out, used)
    rep.files.update(files)
    extra = "".join("\n" + text for text in (tuned, stability) if text)
    rep.files["report"].write_text(_report_markdown(rep, include_incomplete) + extra)
    (out / "problems.json").write_text(json.dumps(
        [{"run": p.run, "reason": p.reason, "excluded": p.excluded} for p in study.problems], indent=1))
    rep.files["problems"] = out / "problems.json"
    return rep
