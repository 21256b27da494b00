"""The report's figures, PNG via matplotlib's object API (no pyplot state, no display needed).

Every figure has a fixed pixel size (FIGSIZE at DPI) so that reports look alike across studies.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.stats import strategy_flat

DPI = 100
FIGSIZE = (10.0, 5.0)  # inches -> 1000 x 500 px
COLORS = [f"C{i}" for i in range(10)]


def _new(ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, format="png")
    return path


def curves(metrics: pd.DataFrame, runs: pd.DataFrame, summary: pd.DataFrame, path: Path) -> Path:
    """Top-1 (and EMA top-1 when recorded) vs epoch: mean over seeds, band from min to max."""
    keyed = metrics.merge(runs[["run_id", "condition_key"]], on="run_id")
    panels = [("top1", "Top-1 (%)")]
    if keyed["ema_top1"].notna().any():
        panels.append(("ema_top1", "EMA top-1 (%)"))
    fig, axes = _new(len(panels))
    for ax, (col, ylabel) in zip(axes, panels):
        for i, (_, cond) in enumerate(summary.iterrows()):
            rows = keyed[keyed["condition_key"] == cond["condition_key"]]
            per_epoch = rows.groupby("epoch")[col].agg(["mean", "min", "max", "count"]).dropna()
            if per_epoch.empty:
                continue
            color = COLORS[i % len(COLORS)]
            n = int(per_epoch["count"].max())
            ax.plot(per_epoch.index, per_epoch["mean"], color=color, lw=1.6, label=f"{cond['name']} (n={n})")
            ax.fill_between(per_epoch.index, per_epoch["min"], per_epoch["max"], color=color, alpha=0.2, lw=0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_title("Top-1 vs epoch (line: mean over seeds, band: min–max)")
    return _save(fig, path)


def pareto(summary: pd.DataFrame, path: Path) -> Path:
    """Params vs final top-1, one marker per condition (error bar: std over seeds), Pareto front dashed."""
    fig, (ax,) = _new()
    pts = summary.dropna(subset=["params", "final_top1_mean"])
    unit, scale = ("M", 1e6) if pts["params"].max() >= 1e6 else ("K", 1e3)
    for i, (_, r) in enumerate(pts.iterrows()):
        ax.errorbar(r["params"] / scale, r["final_top1_mean"],
                    yerr=r["final_top1_std"] if np.isfinite(r["final_top1_std"]) else None,
                    fmt="o", ms=7, capsize=4, color=COLORS[i % len(COLORS)])
        ax.annotate(r["name"], (r["params"] / scale, r["final_top1_mean"]), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    front = _pareto_front(pts["params"].to_numpy(float), pts["final_top1_mean"].to_numpy(float))
    if len(front) > 1:
        f = pts.iloc[front]
        ax.plot(f["params"] / scale, f["final_top1_mean"], "--", color="gray", lw=1, label="Pareto front")
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel(f"parameters ({unit})")
    ax.set_ylabel("final top-1 (%)")
    ax.set_title("Parameters vs accuracy (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if len(front) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


def _pareto_front(params: np.ndarray, acc: np.ndarray) -> list[int]:
    """Indices of points no other point beats with fewer-or-equal params and higher accuracy."""
    order = np.lexsort((-acc, params))
    front, best = [], -math.inf
    for i in order:
        if acc[i] > best:
            front.append(int(i))
            best = acc[i]
    return front


def throughput(summary: pd.DataFrame, path: Path) -> Path:
    """Left: img/s per condition. Right: speedup over the model's baseline vs the MAC-ratio bound."""
    fig, (ax_abs, ax_rel) = _new(2)
    names = list(summary["name"])
    x = np.arange(len(names))
    err = summary["throughput_std"].to_numpy(float)
    img = summary["throughput_img_s"].to_numpy(float)
    bars = ax_abs.bar(x, img, color=COLORS[0], yerr=np.where(np.isfinite(err), err, 0), capsize=4)
    ax_abs.bar_label(bars, labels=[f"{v:,.0f}" if np.isfinite(v) else "" for v in img], fontsize=8)
    ax_abs.set_ylim(0, np.nanmax(img) * 1.15 if np.isfinite(img).any() else 1)
    sources = sorted(set(summary["throughput_source"]))
    ax_abs.set_title("Throughput: " + ", ".join("training (all ranks)" if s == "train" else s for s in sources),
                     fontsize=10)
    ax_abs.set_ylabel("images / s")
    speed = summary["speedup"].to_numpy(float)
    bars = ax_rel.bar(x, speed, color=COLORS[1], label="measured speedup")
    ax_rel.bar_label(bars, labels=[f"{v:.2f}×" if np.isfinite(v) else "n/a" for v in speed], fontsize=8,
                     label_type="center")
    mac = summary["mac_ratio"].to_numpy(float)
    ax_rel.hlines(mac, x - 0.4, x + 0.4, colors="black", lw=2.5, label="MAC-ratio bound")
    ax_rel.axhline(1.0, color="gray", lw=0.8, ls=":")
    top = np.nanmax(np.concatenate([speed, mac, [1.0]]))
    ax_rel.set_ylim(0, top * 1.3)  # headroom keeps the legend off the bars
    ax_rel.set_title("Speedup over the model's baseline", fontsize=10)
    ax_rel.set_ylabel("× baseline")
    ax_rel.legend(fontsize=8, loc="upper left", ncol=2)
    for ax in (ax_abs, ax_rel):
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def ablation_axes(summary: pd.DataFrame) -> dict[str, dict[str, object]]:
    """{axis: {condition_key: value}} for every swept ablation key and every varied strategy parameter.

    A strategy parameter is skipped when an ablation key already sweeps a parameter of that name
    (grid key 'strategy.keep_ratio' and strategy parameter 'shallow.keep_ratio' are one axis).
    """
    values: dict[str, dict[str, object]] = {}
    for _, r in summary.iterrows():
        for k, v in json.loads(r["ablation"]).items():
            values.setdefault(k, {})[r["condition_key"]] = v
    ablation_leaves = {k.rsplit(".", 1)[-1] for k in values}
    for _, r in summary.iterrows():
        for k, v in strategy_flat(r["strategy_params"]).items():
            if k.rsplit(".", 1)[-1] not in ablation_leaves:
                values.setdefault(k, {})[r["condition_key"]] = v
    return {k: v for k, v in values.items()
            if len({json.dumps(x, sort_keys=True) for x in v.values()}) > 1}


def ablation(summary: pd.DataFrame, axis: str, values: dict[str, object], path: Path) -> Path:
    """Final top-1 (mean ± std) against one swept axis; one line per remaining configuration."""
    fig, (ax,) = _new()
    rows = summary[summary["condition_key"].isin(values)].copy()
    rows["_x"] = [values[k] for k in rows["condition_key"]]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rows["_x"])
    cats = sorted({json.dumps(v) for v in rows["_x"]})
    # Series: same model and strategy, same values on every other axis.
    rows["_series"] = [_series_label(r, axis) for _, r in rows.iterrows()]
    for i, (label, grp) in enumerate(rows.groupby("_series", sort=True)):
        xs = grp["_x"].astype(float) if numeric else grp["_x"].map(lambda v: cats.index(json.dumps(v)))
        grp = grp.assign(_xp=list(xs)).sort_values("_xp")
        std = grp["final_top1_std"].to_numpy(float)
        ax.errorbar(grp["_xp"], grp["final_top1_mean"], yerr=np.where(np.isfinite(std), std, 0),
                    marker="o", capsize=4, color=COLORS[i % len(COLORS)], label=label)
    for j, (_, b) in enumerate(summary[summary["is_baseline"]].iterrows()):
        if b["model"] in set(rows["model"]) and np.isfinite(b["final_top1_mean"]):
            ax.axhline(b["final_top1_mean"], ls="--", lw=1, color="gray", label=f"{b['name']}")
    if not numeric:
        ax.set_xticks(range(len(cats)), [json.loads(c) if isinstance(json.loads(c), str) else c for c in cats])
    ax.set_xlabel(axis)
    ax.set_ylabel("final top-1 (%)")
    ax.set_title(f"Ablation over {axis} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _series_label(r: pd.Series, axis: str) -> str:
    others = {**strategy_flat(r["strategy_params"]), **json.loads(r["ablation"])}
    others.pop(axis, None)
    leaf = axis.rsplit(".", 1)[-1]
    others = {k: v for k, v in others.items() if k.rsplit(".", 1)[-1] != leaf}
    extra = ", ".join(f"{k}={v}" for k, v in sorted(others.items()))
    base = f"{r['strategy'] or 'strategy'} ({r['model']})"
    return f"{base} [{extra}]" if extra else base


def axis_filename(axis: str) -> str:
    return "ablation_" + re.sub(r"[^A-Za-z0-9]+", "_", axis).strip("_") + ".png"
