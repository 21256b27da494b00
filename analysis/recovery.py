"""Starting points, teachers and recovery: the columns saying where each run started and what it learned from,
the recovery table (teacher, pruned at epoch 0, recovered), its figure, and the study's stage graph.

A recovered run is a run that trained (epochs > 0) from another model's weights: `model.init` is `run:<c>`, or
`pretrained`/a file. Its teacher row is the model it was derived from: the run `run:<c>` names (same seed, grid
point within), else the run with the same `model.init` and no strategies. Its "pruned at epoch 0" row is the
run with `train.epochs: 0`, the same `model.init`, seed and strategies.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis import tables
from rundir import RecordedSpec, dependencies, index_nodes, read_index, run_condition, stage_lines

SOURCE_COLUMNS = ("init", "teacher", "distill_loss", "alpha", "tau")
RECOVERY_HEADER = ["Condition", "Seed", "Teacher", "Teacher top-1", "Pruned, epoch 0", "Recovered", "Kept of teacher",
                   "Params −", "GFLOPs −"]


def source_columns(spec: RecordedSpec | None) -> dict:
    """init source, teacher source, distillation loss, alpha, tau of one recorded run spec (None where absent)."""
    if spec is None:
        return {"init": "random", "teacher": None, "distill_loss": None, "alpha": None, "tau": None}
    distill = spec.distill or {}
    return {"init": spec.init, "teacher": spec.teacher, "distill_loss": distill.get("loss"),
            "alpha": distill.get("alpha"), "tau": distill.get("tau")}


def export_top1(run: pd.Series, spec: RecordedSpec | None) -> float:
    """Top-1 of the weights a `run:<condition>` reference hands on: the run's best export, i.e. the peak of its
    `checkpoint.best_metric` (auto: the EMA's top-1 when EMA is on), not its last epoch's raw top-1."""
    metric = spec.best_metric if spec is not None else "top1"
    return run.get("ema_peak_top1" if metric == "ema_top1" else "peak_top1", math.nan)


def add_source_columns(runs: pd.DataFrame, specs: dict[str, RecordedSpec]) -> pd.DataFrame:
    cols = {c: [source_columns(specs.get(r))[c] for r in runs["run_id"]] for c in SOURCE_COLUMNS}
    strategies = [json.dumps(specs[r].strategies if r in specs else [], sort_keys=True) for r in runs["run_id"]]
    return runs.assign(**cols, strategies=strategies,
                       export_top1=[export_top1(row, specs.get(row["run_id"])) for _, row in runs.iterrows()])


def study_graph(study_dir: Path, specs: dict[str, RecordedSpec]) -> tuple[dict[str, list[str]], list[str]]:
    """(run -> runs it needs, the stage graph as text lines) from runs.json, else from the runs' recorded specs."""
    index, _ = read_index(study_dir)
    nodes = index_nodes(index) if index else [s.node(r) for r, s in specs.items()]
    return dependencies(nodes), stage_lines(nodes)


def _first(frame: pd.DataFrame) -> pd.Series | None:
    return frame.iloc[0] if len(frame) else None


def _pct_less(new: float, old: float) -> float:
    return 100.0 * (1.0 - new / old) if old and math.isfinite(old) and math.isfinite(new) else math.nan


def recovery_rows(runs: pd.DataFrame, deps: dict[str, list[str]]) -> pd.DataFrame:
    """One row per recovered run (see the module doc); empty when the study has none."""
    usable = runs[runs["usable"]]
    out = []
    for _, r in usable.iterrows():
        if not (r["epochs_total"] and r["epochs_total"] > 0) or r["init"] in (None, "random"):
            continue
        same_seed = usable[usable["seed"] == r["seed"]]
        named = run_condition(r["init"])
        if named is not None:
            teacher = _first(same_seed[same_seed["run_id"].isin(deps.get(r["run_id"], []))
                                       & (same_seed["condition"] == named)])
            teacher_top1 = teacher["export_top1"] if teacher is not None else math.nan
        else:
            teacher = _first(same_seed[(same_seed["init"] == r["init"]) & (same_seed["strategies"] == "[]")])
            teacher_top1 = teacher["final_top1"] if teacher is not None else math.nan
        if teacher is None or r["strategies"] == "[]":
            continue
        pruned = _first(same_seed[(same_seed["epochs_total"] == 0) & (same_seed["init"] == r["init"])
                                  & (same_seed["strategies"] == r["strategies"])
                                  & (same_seed["ablation"] == r["ablation"])])
        out.append({
            "condition": r["condition"], "seed": int(r["seed"]), "run_id": r["run_id"],
            "teacher_run": teacher["run_id"], "teacher_top1": teacher_top1,
            "pruned_top1": pruned["final_top1"] if pruned is not None else math.nan,
            "recovered_top1": r["final_top1"],
            "kept_pct": 100.0 * r["final_top1"] / teacher_top1 if teacher_top1 else math.nan,
            "params_less_pct": _pct_less(r["params"], teacher["params"]),
            "gflops_less_pct": _pct_less(r["gflops"], teacher["gflops"]),
            "distill_loss": r["distill_loss"],
        })
    return pd.DataFrame(out)


def recovery_markdown(rows: pd.DataFrame) -> str:
    body = [[str(r["condition"]) + (f" ({r['distill_loss']})" if isinstance(r["distill_loss"], str) else ""),
             str(r["seed"]), r["teacher_run"], tables.fmt_num(r["teacher_top1"], 2), tables.fmt_num(r["pruned_top1"], 2),
             tables.fmt_num(r["recovered_top1"], 2), f"{tables.fmt_num(r['kept_pct'], 1)}%",
             f"{tables.fmt_num(r['params_less_pct'], 1)}%", f"{tables.fmt_num(r['gflops_less_pct'], 1)}%"]
            for _, r in rows.sort_values(["condition", "seed"]).iterrows()]
    return tables.markdown(RECOVERY_HEADER, body)


def recovery_figure(rows: pd.DataFrame, metrics: pd.DataFrame, path: Path) -> Path:
    """Top-1 vs epoch of each recovered run (epoch 0: its pruned model as built), its teacher's top-1 as a line."""
    fig = Figure(figsize=(10.0, 5.0), dpi=100, layout="constrained")
    ax = fig.subplots()
    for i, (_, r) in enumerate(rows.sort_values(["condition", "seed"]).iterrows()):
        color = f"C{i % 10}"
        curve = metrics[metrics["run_id"] == r["run_id"]].sort_values("epoch")
        xs, ys = list(curve["epoch"]), list(curve["top1"])
        if math.isfinite(r["pruned_top1"]):
            xs, ys = [0, *xs], [r["pruned_top1"], *ys]
        ax.plot(xs, ys, color=color, marker="o", ms=3, lw=1.4, label=f"{r['condition']} s{r['seed']}")
        ax.axhline(r["teacher_top1"], color=color, ls="--", lw=1, alpha=0.7)
    ax.set_xlabel("epoch (0: pruned, before recovery)")
    ax.set_ylabel("Top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Recovery: top-1 vs epoch (dashed: the teacher's top-1)")
    fig.savefig(path, dpi=100, format="png")
    return path
