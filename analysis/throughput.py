"""Throughput per condition: `jobs bench` results (bench.json) matched to the study's conditions, else the
training img/s, with the speedup over the same model's baseline and the MAC-ratio bound."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from rundir import split_expression


def _reduction_specs(specs: list[dict]) -> list[dict]:
    return [s for s in specs if s.get("name") != "baseline"]


def _bench_fits(entry, row: pd.Series) -> bool:
    """Same model, same strategies, the parameters the bench names equal, same parameter count if known."""
    if entry.model != row["model"]:
        return False
    try:
        bench = _reduction_specs(split_expression(entry.strategy))
    except ValueError:
        return False
    mine = _reduction_specs(json.loads(row["strategy_params"]))
    if [s["name"] for s in bench] != [s.get("name") for s in mine]:
        return False
    for b, m in zip(bench, mine):
        if any((m.get("params") or {}).get(k) != v for k, v in b["params"].items()):
            return False
    return not (np.isfinite(entry.params) and np.isfinite(row["params"]) and entry.params != row["params"])


def match_bench(summary: pd.DataFrame, bench) -> list:
    """The bench entry standing for each condition, or None.

    An entry named like the condition label wins (when no other condition of the model has that label);
    otherwise it must fit by strategy and parameters
    (_bench_fits). An entry without a parameter count that fits several conditions (a bare "shallow"
    in a keep_ratio sweep) stands for none of them: its numbers belong to one width only.
    """
    fits = {id(e): [i for i, (_, r) in enumerate(summary.iterrows()) if _bench_fits(e, r)] for e in bench}
    label_count = summary.groupby(["model", "condition"])["condition_key"].transform("count").tolist()
    out = []
    for i, (_, r) in enumerate(summary.iterrows()):
        # a label shared by several grid points names none of them
        named = [e for e in bench if e.model == r["model"] and e.strategy == r["condition"] and label_count[i] == 1]
        fitting = [e for e in bench if i in fits[id(e)] and (np.isfinite(e.params) or len(fits[id(e)]) == 1)]
        out.append((named or fitting or [None])[0])
    return out


def add_throughput(summary: pd.DataFrame, bench) -> None:
    """Throughput per condition: `jobs bench` results when the study has them, else training img/s.

    speedup is relative to the same model's baseline; mac_ratio (baseline MACs / condition MACs) is the
    speedup a purely compute-bound model would reach.
    """
    img, std, source, speedup, mac = [], [], [], [], []
    for e, (_, r) in zip(match_bench(summary, bench), summary.iterrows()):
        if e is not None:
            img.append(e.img_s)
            std.append(math.nan)
            source.append(f"bench ({e.device})")
            speedup.append(e.ratio)
            mac.append(e.mac_ratio)
        else:
            img.append(r["train_img_s_mean"])
            std.append(r["train_img_s_std"])
            source.append("train")
            speedup.append(math.nan)
            mac.append(math.nan)
    summary["throughput_img_s"] = img
    summary["throughput_std"] = std
    summary["throughput_source"] = source
    summary["speedup"] = speedup
    summary["mac_ratio"] = mac
    for i, r in summary.iterrows():
        base = summary[(summary["model"] == r["model"]) & summary["is_baseline"]]
        if len(base) != 1:
            continue
        b = base.iloc[0]
        if not np.isfinite(r["speedup"]) and b["throughput_source"] == r["throughput_source"]:
            summary.loc[i, "speedup"] = r["throughput_img_s"] / b["throughput_img_s"]
        if not np.isfinite(r["mac_ratio"]):
            # all matmuls (gmacs, as jobs bench uses) when recorded; files without it have gflops only
            col = "gmacs" if np.isfinite(r["gmacs"]) and np.isfinite(b["gmacs"]) else "gflops"
            summary.loc[i, "mac_ratio"] = b[col] / r[col]
