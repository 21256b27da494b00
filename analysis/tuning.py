"""The report's "Tuning" section: what each condition's search found and cost, and what tuning changed.

Reads `<study>/tuning/tuning.json` (the summary written by the tuning stage) and the trials' own run folders
(`tuning/<cond>-tNNN/metrics.parquet`) for the curves. Numbers about accuracy come from the confirm runs on
val only (the study's ordinary run folders): tuned ones carry `ablation.tuned: true`, the base recipe
(`confirm.untuned`) `ablation.tuned: false`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis import tables
from analysis.figures import COLORS, DPI, FIGSIZE
from analysis.load import read_run_metrics
from rundir import exception_line

TUNING_DIR = "tuning"
TUNING_FILE = "tuning.json"


@dataclass
class Tuning:
    doc: dict                 # tuning.json as written
    trials: pd.DataFrame      # one row per trial: condition, run_id, status, metric, epochs_done, images, ...
    curves: pd.DataFrame      # condition, run_id, epoch, value (the tuned metric per epoch, from the trial folders)
    problems: list[str] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return str(self.doc.get("metric", "top1"))


def read_tuning(study_dir: Path) -> Tuning | None:
    """The study's tuning summary and trial curves; None for a study that was not tuned."""
    path = Path(study_dir) / TUNING_DIR / TUNING_FILE
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        conditions = doc["conditions"]
        if not isinstance(conditions, dict):
            raise ValueError("'conditions' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Tuning({}, pd.DataFrame(), pd.DataFrame(), [f"{path} unreadable: {exception_line(exc)}"])
    rows = [{**t, "condition": cond, "params": json.dumps(t.get("params") or {}, sort_keys=True)}
            for cond, c in conditions.items() for t in c.get("trials") or []]
    trials = pd.DataFrame(rows, columns=sorted({"condition", "run_id", "status", "metric", "epochs_done", "epochs",
                                                "images", "images_per_epoch", "params"} | {k for r in rows for k in r}))
    tuning = Tuning(doc, trials, pd.DataFrame(columns=["condition", "run_id", "epoch", "value"]))
    frames = []
    for t in trials.itertuples():
        df, errors, _ = read_run_metrics(Path(study_dir) / TUNING_DIR / str(t.run_id))
        if errors or df is None or tuning.metric not in df:
            tuning.problems.append(f"trial {t.run_id}: no curve ({'; '.join(errors) or 'no ' + tuning.metric})")
            continue
        frames.append(pd.DataFrame({"condition": t.condition, "run_id": t.run_id, "epoch": df["epoch"],
                                    "value": df[tuning.metric].astype(float)}))
    if frames:
        tuning.curves = pd.concat(frames, ignore_index=True)
    return tuning


def _fmt_param(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def best_markdown(tuning: Tuning) -> str:
    """One row per condition: its winning trial, the winner's held-out metric and every tuned value."""
    conds = tuning.doc["conditions"]
    keys = sorted({k for c in conds.values() for k in (c.get("best") or {})})
    header = ["Condition", "Winner", f"Held-out {tuning.metric}", *keys]
    rows = []
    for name, c in conds.items():
        best = c.get("best") or {}
        done = "" if c.get("done") else " (tuning not finished)"
        rows.append([name, str(c.get("best_trial") or tables.DASH) + done, tables.fmt_num(c.get("best_metric"), 2),
                     *(_fmt_param(best[k]) if k in best else tables.DASH for k in keys)])
    return tables.markdown(header, rows)


def budget_frame(tuning: Tuning) -> pd.DataFrame:
    """Per condition: trials run, stopped early, failed; epochs and images spent, and the share of a full budget."""
    rows = []
    for cond, grp in tuning.trials.groupby("condition", sort=False):
        epochs = pd.to_numeric(grp["epochs"], errors="coerce")
        per_epoch = pd.to_numeric(grp["images_per_epoch"], errors="coerce")
        full_epochs = float(epochs.sum())
        rows.append({
            "condition": cond, "trials": len(grp),
            "stopped": int((grp["status"] == "stopped").sum()), "failed": int((grp["status"] == "error").sum()),
            "epochs_spent": float(pd.to_numeric(grp["epochs_done"], errors="coerce").sum()),
            "epochs_full": full_epochs,
            "images": float(pd.to_numeric(grp["images"], errors="coerce").sum()),
            "images_full": float((epochs * per_epoch).sum()),
        })
    return pd.DataFrame(rows)


def budget_markdown(budget: pd.DataFrame) -> str:
    header = ["Condition", "Trials", "Stopped early", "Failed", "Epochs (of full)", "Images seen (of full)"]
    rows = [[r.condition, str(r.trials), str(r.stopped), str(r.failed),
             f"{r.epochs_spent:.0f} / {r.epochs_full:.0f} ({_pct(r.epochs_spent, r.epochs_full)})",
             f"{tables.fmt_count(r.images)} / {tables.fmt_count(r.images_full)} ({_pct(r.images, r.images_full)})"]
            for r in budget.itertuples()]
    return tables.markdown(header, rows)


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole and math.isfinite(whole) and math.isfinite(part) else tables.DASH


def confirm_frame(runs: pd.DataFrame, conditions: list[str], include_incomplete: bool) -> pd.DataFrame:
    """Per condition: final top-1 of the tuned and the untuned confirm runs (mean, std, min, max, n over seeds)."""
    use = runs[runs["usable"] & (runs["complete"] | include_incomplete)].copy()
    use["tuned"] = [json.loads(a).get("tuned") if isinstance(a, str) else None for a in use["ablation"]]
    rows = []
    for cond in conditions:
        row: dict = {"condition": cond}
        for flag, side in ((True, "tuned"), (False, "untuned")):
            vals = use.loc[(use["condition"] == cond) & (use["tuned"] == flag), "final_top1"].dropna()
            row |= {f"{side}_mean": vals.mean() if len(vals) else math.nan,
                    f"{side}_std": vals.std(ddof=1) if len(vals) > 1 else math.nan,
                    f"{side}_min": vals.min() if len(vals) else math.nan,
                    f"{side}_max": vals.max() if len(vals) else math.nan, f"{side}_n": len(vals)}
        rows.append(row)
    return pd.DataFrame(rows)


def _spread(r: pd.Series, side: str) -> str:
    if not r[f"{side}_n"]:
        return tables.DASH
    text = tables.fmt_pm(r[f"{side}_mean"], r[f"{side}_std"])
    if r[f"{side}_n"] > 1:
        text += f" ({r[f'{side}_min']:.2f}–{r[f'{side}_max']:.2f})"
    return f"{text}, n={r[f'{side}_n']}"


def confirm_markdown(confirm: pd.DataFrame) -> str:
    header = ["Condition", "Untuned top-1 (base recipe)", "Tuned top-1", "Gain (points)"]
    rows = [[r["condition"], _spread(r, "untuned"), _spread(r, "tuned"),
             tables.fmt_num(r["tuned_mean"] - r["untuned_mean"], 2)] for _, r in confirm.iterrows()]
    return tables.markdown(header, rows)


def ranking_lines(confirm: pd.DataFrame) -> list[str]:
    """Did tuning reorder the conditions? Orders by mean final top-1 on val, best first."""
    tuned = confirm[confirm["tuned_n"] > 0]
    both = tuned[tuned["untuned_n"] > 0]
    if len(tuned) < 2:
        return ["- Fewer than two conditions have tuned confirm runs: no ranking to compare."]

    def order(frame: pd.DataFrame, side: str) -> list[str]:
        return list(frame.sort_values(f"{side}_mean", ascending=False, kind="stable")["condition"])

    def shown(frame: pd.DataFrame, side: str) -> str:
        means = frame.set_index("condition")[f"{side}_mean"]
        ranked = order(frame, side)
        text = f"{ranked[0]} ({means[ranked[0]]:.2f})"
        for prev, c in zip(ranked, ranked[1:]):
            text += f" {'=' if round(means[prev], 2) == round(means[c], 2) else '>'} {c} ({means[c]:.2f})"
        return text

    lines = [f"- Tuned ranking: {shown(tuned, 'tuned')}."]
    if len(both) < 2:
        return lines + ["- No untuned confirm runs to compare with (`tune.confirm.untuned: true` runs the base "
                        "recipe on the same seeds)."]
    lines.append(f"- Untuned ranking: {shown(both, 'untuned')}.")
    if order(both, "tuned") == order(both, "untuned"):
        lines.append("- **The ranking of conditions did not change after tuning.**")
    else:
        moved = [c for c, u in zip(order(both, "tuned"), order(both, "untuned")) if c != u]
        lines.append(f"- **The ranking of conditions changed after tuning** (positions of {', '.join(moved)} moved).")
    return lines


def curves_figure(tuning: Tuning, path: Path) -> Path:
    draw_curves(tuning).savefig(path, dpi=DPI, format="png")
    return path


def draw_curves(tuning: Tuning) -> Figure:
    """Each trial's tuned metric vs epoch, one colour per condition; stopped trials dashed and ended by an x.

    Each trial's line has the trial's run id as its gid, so a test can find it."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    status = dict(zip(tuning.trials["run_id"], tuning.trials["status"]))
    winners = {c.get("best_trial") for c in tuning.doc["conditions"].values()}
    conds = list(tuning.doc["conditions"])
    for run_id, grp in tuning.curves.groupby("run_id", sort=True):
        grp = grp.sort_values("epoch")
        color = COLORS[conds.index(grp["condition"].iloc[0]) % len(COLORS)]
        stopped = status.get(run_id) == "stopped"
        ax.plot(grp["epoch"], grp["value"], color=color, ls="--" if stopped else "-",
                lw=2.4 if run_id in winners else 1.0, alpha=0.9 if run_id in winners else 0.6, gid=run_id)
        ax.plot(grp["epoch"].iloc[-1:], grp["value"].iloc[-1:], color=color, ls="",
                marker="x" if stopped else "o", ms=7 if stopped else 4)
    for i, cond in enumerate(conds):
        ax.plot([], [], color=COLORS[i % len(COLORS)], lw=2, label=cond)
    ax.plot([], [], color="gray", ls="--", marker="x", label="stopped early")
    ax.plot([], [], color="gray", lw=2.4, label="winner")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"held-out {tuning.metric}" if not tuning.doc.get("tune_on_val") else f"val {tuning.metric}")
    ax.set_title(f"Tuning trials: {tuning.metric} vs epoch per trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def report_section(study_dir: Path, runs: pd.DataFrame, out: Path,
                   include_incomplete: bool = False) -> tuple[str, dict[str, Path]]:
    """The "Tuning" section as Markdown and the files it wrote; ("", {}) for a study without tuning."""
    tuning = read_tuning(Path(study_dir))
    if tuning is None:
        return "", {}
    lines = ["## Tuning", ""]
    if not tuning.doc:
        return "\n".join(lines + [f"- {p}" for p in tuning.problems] + [""]), {}
    d = tuning.doc
    holdout = d.get("holdout") or {}
    scored_on = ("**the val set** (`tune_on_val: true`)" if d.get("tune_on_val") else
                 f"a held-out {holdout.get('fraction', '?')} slice of train (seed {holdout.get('seed', '?')})")
    epochs = d.get("epochs") or (int(pd.to_numeric(tuning.trials["epochs"], errors="coerce").max())
                                 if len(tuning.trials) else "?")
    lines += [f"Search `{d.get('search', '?')}`, scheduler `{d.get('scheduler', '?')}`, {d.get('trials', '?')} "
              f"trials per condition of up to {epochs} epochs, {d.get('mode', 'max')} "
              f"`{tuning.metric}` scored on {scored_on}. Winners were then trained on the confirm seeds and "
              "scored on val; only those runs give the accuracy numbers below.", ""]
    if d.get("tune_on_val"):
        lines += ["> **Warning:** the trials were scored on the val set (`tune_on_val: true`): the hyperparameters "
                  "were chosen on the data the confirm runs are reported on, so the tuned numbers are optimistic.",
                  ""]
    lines += ["### Best hyperparameters", "", best_markdown(tuning), ""]
    if len(tuning.trials):
        lines += ["### Budget", "", "Compute spent per condition: epochs trained over all trials and the training "
                  "images they saw (epochs × images), against every trial running its full length.", "",
                  budget_markdown(budget_frame(tuning)), ""]
    confirm = confirm_frame(runs, list(d["conditions"]), include_incomplete)
    lines += ["### Tuned vs untuned", "", "Final top-1 on val of the confirm runs: mean ± std over seeds "
              "(min–max), per condition.", "", confirm_markdown(confirm), "", *ranking_lines(confirm), ""]
    files = {}
    if len(tuning.curves):
        files["tuning_fig"] = curves_figure(tuning, out / "tuning_curves.png")
        lines += ["### Trial curves", "", f"![Tuning trials]({files['tuning_fig'].name})", ""]
    if tuning.problems:
        lines += [f"- {p}" for p in tuning.problems] + [""]
    return "\n".join(lines), files
