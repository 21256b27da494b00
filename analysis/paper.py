"""The seed paper's ViT-B/16 numbers (the seed paper's table) and the side-by-side table."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd

from analysis.tables import fmt_count, fmt_pm, markdown

PAPER_MODEL = "vit_base_patch16_224"
PAPER_EPOCHS = 300


@dataclass(frozen=True)
class PaperRow:
    name: str
    strategy: str
    params: float
    top1: tuple[float, float]
    top5: tuple[float, float]
    peak_epoch: tuple[float, float]
    delta_pf: tuple[float, float]
    img_s: float
    # Parameters of the paper's setting; a study condition matches when its resolved params agree.
    expected: tuple[tuple[str, object], ...] = ()


PAPER_ROWS = (
    PaperRow("Baseline", "baseline", 86.6e6, (81.05, 0.11), (95.36, 0.08), (219, 13), (0.47, 0.04), 1020),
    PaperRow("GroupedMLP", "grouped", 58.2e6, (81.47, 0.11), (95.66, 0.08), (272, 1), (0.06, 0.06), 1017,
             (("group_size", 2),)),
    PaperRow("ShallowMLP", "shallow", 58.2e6, (81.25, 0.02), (95.52, 0.02), (273, 0), (0.03, 0.01), 1411,
             (("keep_ratio", 0.5), ("select", "first"))),
)


def is_paper_model(model: str) -> bool:
    return str(model).split(".")[0] == PAPER_MODEL


def _matches(row: pd.Series, paper: PaperRow) -> bool:
    if json.loads(row["ablation"]):
        return False
    specs = json.loads(row["strategy_params"])
    if paper.strategy == "baseline":
        return all(s.get("name") == "baseline" for s in specs)
    if len(specs) != 1 or specs[0].get("name") != paper.strategy:
        return False
    params = specs[0].get("params") or {}
    return all(params.get(k, v) == v for k, v in paper.expected)


def match(summary: pd.DataFrame) -> dict[str, list[tuple[PaperRow, pd.Series]]]:
    """Per model: the paper's rows paired with this study's conditions of the paper's settings.

    A model is listed when its baseline and at least one reduced condition match and have results.
    """
    out = {}
    for model, conds in summary.groupby("model", sort=True):
        pairs = []
        for paper in PAPER_ROWS:
            hits = [r for _, r in conds.iterrows() if _matches(r, paper)]
            if len(hits) == 1:
                pairs.append((paper, hits[0]))
        if (any(p.strategy == "baseline" for p, _ in pairs) and len(pairs) >= 2
                and any(math.isfinite(r["final_top1_mean"]) for _, r in pairs)):
            out[str(model)] = pairs
    return out


def claims_markdown(pairs: list[tuple[PaperRow, pd.Series]]) -> str:
    """The seed paper's qualitative findings, checked on this study's numbers (any model)."""
    base_p, base = next((p, r) for p, r in pairs if p.strategy == "baseline")
    header = ["Finding (paper, ViT-B/16)", "Paper", "This study", "Holds here"]
    rows = []

    def add(claim: str, paper_text: str, mine: float, ref: float, want_greater: bool, fmt: str) -> None:
        if not (math.isfinite(mine) and math.isfinite(ref)):
            rows.append([claim, paper_text, "–", "no data"])
            return
        shown = f"{format(mine, fmt)} vs {format(ref, fmt)}"
        if format(mine, fmt) == format(ref, fmt):
            rows.append([claim, paper_text, shown, "tie"])
            return
        holds = mine > ref if want_greater else mine < ref
        rows.append([claim, paper_text, shown, "yes" if holds else "no"])

    for p, r in pairs:
        if p.strategy == "baseline":
            continue
        add(f"{p.name} top-1 above Baseline", f"{p.top1[0]:.2f} vs {base_p.top1[0]:.2f}",
            r["final_top1_mean"], base["final_top1_mean"], True, ".2f")
        add(f"{p.name} Δ(P→F) below Baseline", f"{p.delta_pf[0]:.2f} vs {base_p.delta_pf[0]:.2f}",
            r["delta_pf_mean"], base["delta_pf_mean"], False, ".2f")
        if p.img_s != base_p.img_s and p.img_s > base_p.img_s * 1.05:
            train = " (train)" if r["throughput_source"] == "train" else ""
            add(f"{p.name} throughput above Baseline", f"{p.img_s:,.0f} vs {base_p.img_s:,.0f}",
                r["throughput_img_s"], base["throughput_img_s"], True, ",.0f")
            rows[-1][2] += train if rows[-1][2] != "–" else ""
    return markdown(header, rows)


def comparison_markdown(pairs: list[tuple[PaperRow, pd.Series]]) -> str:
    header = ["Model", "Params (paper / this)", "Top-1 paper", "Top-1 this", "Top-5 paper", "Top-5 this",
              "Peak epoch paper", "Peak epoch this", "Δ(P→F) paper", "Δ(P→F) this"]
    rows = []
    for p, r in pairs:
        rows.append([
            p.name, f"{fmt_count(p.params)} / {fmt_count(r['params'])}",
            fmt_pm(*p.top1), fmt_pm(r["final_top1_mean"], r["final_top1_std"]),
            fmt_pm(*p.top5), fmt_pm(r["final_top5_mean"], r["final_top5_std"]),
            fmt_pm(*p.peak_epoch, 0), fmt_pm(r["peak_epoch_mean"], r["peak_epoch_std"], 0),
            fmt_pm(*p.delta_pf), fmt_pm(r["delta_pf_mean"], r["delta_pf_std"]),
        ])
    epochs = sorted({int(r["epochs_total"]) for _, r in pairs})
    lines = [markdown(header, rows), ""]
    notes = [f"Paper: ImageNet-1k, {PAPER_EPOCHS} epochs, 2 seeds; throughput 1,020 / 1,017 / 1,411 img/s "
             f"(Baseline / GroupedMLP / ShallowMLP)."]
    notes.append(f"This study: {', '.join(map(str, epochs))} epochs, n = "
                 + ", ".join(f"{p.name} {int(r['n_seeds'])}" for p, r in pairs) + " seeds.")
    if epochs != [PAPER_EPOCHS]:
        notes.append("The schedules differ, so accuracies and peak epochs are not directly comparable; "
                     "compare the orderings and the Δ(P→F) trend instead.")
    return "\n".join(lines + notes)
