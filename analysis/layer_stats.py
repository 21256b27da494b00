"""Training-stability diagnostics from the runs' layer_stats.parquet (written with `logging.layer_stats: true`):
a figure of the gradient norm per block over training, by condition, and a table of its coefficient of
variation (std / mean over the logged steps) per condition.

MiniViT explains weight sharing's instability by large, fluctuating per-layer gradient norms; the CV is
that fluctuation as one number: computed per run, block and part (attention / MLP), then averaged over
blocks and seeds. A shared module (one gradient for several blocks) counts once.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from analysis import tables
from analysis.load import find_run_dirs
from rundir.names import LAYER_STATS_FILE

FIGURE_FILE = "grad_norm_per_block.png"
TABLE_FILE = "grad_norm_cv.csv"
TITLE = "Gradient norm per block over training, by condition"
DPI = 100


def load(study_dir: Path | str, run_ids: set[str] | None = None) -> pd.DataFrame:
    """Every run's rows (of `run_ids` when given); an empty frame when no run recorded layer stats."""
    frames = []
    for run_dir in find_run_dirs(Path(study_dir)):
        path = run_dir / LAYER_STATS_FILE
        if path.exists() and (run_ids is None or run_dir.name in run_ids):
            frames.append(pq.read_table(path).to_pandas())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def cv_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per condition and part: CV of the gradient norm over steps (mean and max over blocks, mean over seeds)."""
    per_block = df.groupby(["condition", "run_id", "part", "block"])["grad_norm"].agg(["mean", "std"])
    per_block["cv"] = per_block["std"] / per_block["mean"].where(per_block["mean"] > 0)
    per_run = per_block.groupby(["condition", "run_id", "part"])["cv"].agg(cv_mean="mean", cv_max="max")
    out = per_run.groupby(["condition", "part"]).agg(
        cv_mean=("cv_mean", "mean"), cv_max=("cv_max", "mean"), runs=("cv_mean", "size")).reset_index()
    shared = df.groupby(["condition", "part"])["shared"].any().rename("shared").reset_index()
    return out.merge(shared, on=["condition", "part"])


def cv_markdown(table: pd.DataFrame) -> str:
    header = ["condition", "part", "CV of grad norm (mean over blocks)", "CV (worst block)", "runs", "shared"]
    rows = [[r["condition"], r["part"], tables.fmt_num(r["cv_mean"], 3), tables.fmt_num(r["cv_max"], 3),
             str(int(r["runs"])), "yes" if r["shared"] else "no"] for _, r in table.iterrows()]
    return tables.markdown(header, rows)


def figure(df: pd.DataFrame, path: Path) -> Path:
    """One panel per condition; a line per block (colour) and part (MLP solid, attention dashed), mean over seeds."""
    conditions = list(dict.fromkeys(df["condition"]))
    fig = Figure(figsize=(max(5.0, 4.0 * len(conditions)), 4.5), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(conditions), squeeze=False, sharey=True)[0]
    cmap = matplotlib.colormaps["viridis"]
    blocks = sorted(df["block"].unique())
    for ax, condition in zip(axes, conditions):
        rows = df[df["condition"] == condition]
        for (part, block), g in rows.groupby(["part", "block"]):
            curve = g.groupby("step")["grad_norm"].mean()
            color = cmap(0.05 + 0.85 * blocks.index(block) / max(len(blocks) - 1, 1))
            shared = " (shared: " + g["blocks"].iloc[0] + ")" if g["shared"].any() else ""
            ax.plot(curve.index, curve.values, color=color, lw=1.2, ls="-" if part == "mlp" else "--",
                    label=f"{part} {block}{shared}")
        ax.set_yscale("log")
        ax.set_title(condition)
        ax.set_xlabel("optimizer update")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2, loc="upper right")
    axes[0].set_ylabel("gradient l2 norm (mean over seeds)")
    fig.suptitle(f"{TITLE} (MLP solid, attention dashed)")
    fig.savefig(path, dpi=DPI, format="png")
    return path


def report_section(study_dir: Path | str, out: Path, run_ids: set[str] | None = None) -> tuple[str, dict[str, Path]]:
    """(markdown section, files written) for report.md; ("", {}) when no run recorded layer stats."""
    df = load(study_dir, run_ids)
    if df.empty:
        return "", {}
    table = cv_table(df)
    files = {"layer_stats_figure": figure(df, Path(out) / FIGURE_FILE), "layer_stats_table": Path(out) / TABLE_FILE}
    table.to_csv(files["layer_stats_table"], index=False)
    lines = [
        "## Training stability: gradient norms per block", "",
        f"From `{LAYER_STATS_FILE}` of {df['run_id'].nunique()} runs (`logging.layer_stats: true`), logged every "
        f"{_every(df)} updates. Coefficient of variation of each block's gradient l2 norm over training "
        "(std / mean over logged steps), averaged over blocks and seeds; a shared module counts once.", "",
        cv_markdown(table), "",
        f"### {TITLE}", "", f"![{TITLE}]({FIGURE_FILE})", "",
    ]
    return "\n".join(lines), files


def _every(df: pd.DataFrame) -> str:
    steps = np.sort(df["step"].unique())
    return str(int(np.min(np.diff(steps)))) if len(steps) > 1 else "N"
