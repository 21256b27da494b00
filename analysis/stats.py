"""Per-run and per-condition statistics, and paired significance tests against the baseline.

A condition is (model, strategy with its parameters, swept ablation values); its runs differ only
by seed. Per-condition numbers are mean ± sample std (ddof=1) over the included runs: the complete
ones, or all of them with include_incomplete.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.load import Study
from analysis.throughput import add_throughput

# Per-run metrics averaged per condition (mean and std columns in summary).
AGG_METRICS = (
    "final_top1", "final_top5", "final_ema_top1", "final_ema_top5",
    "peak_top1", "peak_epoch", "delta_pf",
    "ema_peak_top1", "ema_peak_epoch", "ema_delta_pf",
    "train_img_s", "wall_hours",
)
# Per-run architecture numbers: identical across seeds of a condition.
ARCH_COLUMNS = ("params", "mlp_params", "unique_mlps", "mlp_hidden", "gflops", "gmacs", "expansion_ratio")
# Paired tests against the baseline, on these per-run metrics.
TESTED_METRICS = ("final_top1", "final_top5")
# Seed-paper display names for single-strategy conditions labelled with the bare strategy name.
PRETTY_NAMES = {
    "baseline": "Baseline",
    "grouped": "GroupedMLP",
    "shallow": "ShallowMLP",
    "thin": "ThinMLP",
    "multiplexed": "MultiplexedMLP",
}
ALPHA = 0.05


def _peak(epochs: pd.Series, values: pd.Series) -> tuple[float, float]:
    """Highest value and the first epoch reaching it (NaN, NaN when the column is empty)."""
    if values.notna().sum() == 0:
        return math.nan, math.nan
    i = values.idxmax()
    return float(values[i]), float(epochs[i])


def run_table(study: Study) -> pd.DataFrame:
    """One row per run folder, usable or not (metric columns NaN for the unusable ones)."""
    rows = []
    by_run = dict(tuple(study.metrics.groupby("run_id", sort=False))) if len(study.metrics) else {}
    for run in study.runs:
        excluded = [p.reason for p in study.problems_of(run.run_id) if p.excluded]
        warnings = [p.reason for p in study.problems_of(run.run_id) if not p.excluded]
        status = run.status or {}
        info = run.info
        row = {
            "run_id": run.run_id, "usable": run.usable, "problem": "; ".join(excluded + warnings),
            "condition": info.get("condition"), "model": info.get("model"),
            "seed": info.get("seed"), "ablation": json.dumps(info["ablation"], sort_keys=True)
            if isinstance(info.get("ablation"), dict) else None,
            "epochs_total": status.get("epochs_total", info.get("epochs_total")), "epochs_done": status.get("epoch"),
        }
        df = by_run.get(run.run_id)
        arch = run.record.spec.architecture if run.record is not None and run.record.spec is not None else None
        if df is not None:
            df = df.sort_values("epoch").reset_index(drop=True)
            last = df.iloc[-1]
            epochs_total = int(last["epochs_total"])
            epochs_done = int(df["epoch"].max())
            complete = epochs_done >= epochs_total
            peak, peak_epoch = _peak(df["epoch"], df["top1"])
            ema_peak, ema_peak_epoch = _peak(df["epoch"], df["ema_top1"])
            row.update({
                "study": last["study"], "condition": last["condition"], "strategy": last["strategy"],
                "strategy_params": last["strategy_params"], "ablation": last["ablation"],
                "model": last["model"], "seed": int(last["seed"]),
                "epochs_done": epochs_done, "epochs_total": epochs_total, "complete": complete,
                "final_top1": last["top1"], "final_top5": last["top5"],
                "final_ema_top1": last["ema_top1"], "final_ema_top5": last["ema_top5"],
                "peak_top1": peak, "peak_epoch": peak_epoch, "delta_pf": peak - last["top1"],
                "ema_peak_top1": ema_peak, "ema_peak_epoch": ema_peak_epoch,
                "ema_delta_pf": ema_peak - last["ema_top1"],
                "params": last["params"], "mlp_params": last["mlp_params"], "unique_mlps": last["unique_mlps"],
                "mlp_hidden": last["mlp_hidden"], "gflops": last["gflops"], "gmacs": last["gmacs"],
                # The architecture the run recorded (spec.json), not one worked out from parameter counts.
                "expansion_ratio": arch.expansion_ratio if arch is not None else math.nan,
                # The median skips the first epoch's warm-up (compilation, cache fill) and stragglers.
                "train_img_s": df["train_img_s"].median(),
                "wall_hours": df["epoch_s"].sum() / 3600.0 if df["epoch_s"].notna().any() else math.nan,
                "resumed": bool(df["resumed_from"].notna().any()),
                "host": last["host"],
            })
        else:
            complete = False
        row["complete"] = complete
        row["state"] = run.state
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("run_id", "usable", "problem", "complete", "state", "epochs_done", "epochs_total", "resumed",
                "study", "condition", "strategy", "strategy_params", "ablation", "model", "seed", "host"):
        if col not in out:
            out[col] = pd.Series(dtype=bool if col in ("usable", "complete") else object)
    for col in ("seed", "epochs_done", "epochs_total"):
        out[col] = pd.array([_as_int(x) for x in out[col]], dtype="Int64")
    for col in AGG_METRICS + ARCH_COLUMNS:
        if col not in out:
            out[col] = math.nan
        out[col] = out[col].astype(float)
    out["condition_key"] = [_key(r) if r.usable else None for r in out.itertuples()]
    return out


def _as_int(x) -> int | None:
    try:
        return int(x) if pd.notna(x) else None
    except (TypeError, ValueError):
        return None  # a hand-edited spec.yaml; the run is listed, just without this number


def _key(r) -> str:
    # The label is part of the key: a study's named conditions may differ only by run-spec overrides
    # (say train.lr), which neither strategy_params nor ablation record.
    label = r.condition if isinstance(r.condition, str) else ""
    return json.dumps([r.model, label, json.loads(r.strategy_params), json.loads(r.ablation)], sort_keys=True)


def is_baseline(strategy_params: str) -> bool:
    specs = json.loads(strategy_params)
    return all(s.get("name") == "baseline" for s in specs)


def strategy_flat(strategy_params: str) -> dict[str, object]:
    """{"shallow.keep_ratio": 0.5, ...} from the JSON list of {"name", "params"}."""
    out = {}
    for s in json.loads(strategy_params):
        for k, v in (s.get("params") or {}).items():
            out[f"{s.get('name')}.{k}"] = v
    return out


def _label(strategy: str | None, strategy_params: str) -> str:
    if strategy:
        return strategy
    names = [s.get("name", "?") for s in json.loads(strategy_params)]
    return "+".join(names) or "baseline"


def _short(keys: list[str]) -> dict[str, str]:
    """Last dotted component where it is unambiguous ('strategy.shallow.keep_ratio' -> 'keep_ratio')."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _varying(extras: list[dict]) -> list[str]:
    keys = sorted({k for e in extras for k in e})
    return [k for k in keys if len({json.dumps(e.get(k), sort_keys=True) for e in extras}) > 1]


def _display_names(summary: pd.DataFrame) -> list[str]:
    """Seed-paper names where they apply; conditions sharing a name get the values that tell them apart."""
    names = []
    for r in summary.itertuples():
        label = r.condition if isinstance(r.condition, str) and r.condition else _label(
            r.strategy, r.strategy_params)
        names.append(PRETTY_NAMES.get(label, label))
    if summary["model"].nunique() > 1:
        names = [f"{n} ({m})" for n, m in zip(names, summary["model"])]
    extras = []
    for r in summary.itertuples():
        ablation = json.loads(r.ablation)
        leaves = {k.rsplit(".", 1)[-1] for k in ablation}
        # a grid value of a strategy parameter also appears among the strategy params: show it once
        params = {k: v for k, v in strategy_flat(r.strategy_params).items() if k.rsplit(".", 1)[-1] not in leaves}
        extras.append({**params, **ablation})
    out = list(names)
    for name in set(names):
        idx = [i for i, n in enumerate(names) if n == name]
        if len(idx) < 2:
            continue
        keys = _varying([extras[i] for i in idx])
        short = _short(keys)
        for i in idx:
            parts = [f"{short[k]}={_fmt_value(extras[i].get(k))}" for k in keys]
            out[i] = f"{name} [{', '.join(parts)}]" if parts else f"{name} #{idx.index(i) + 1}"
    return out


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def _baseline_for(cond: pd.Series, summary: pd.DataFrame) -> tuple[int | None, str | None]:
    """Index of the baseline condition of the same model whose ablation values agree the most.

    A condition swept over e.g. train.lr is compared with the baseline at the same lr; keys only one
    side has (a strategy parameter) are ignored.
    """
    cands = summary[(summary["model"] == cond["model"]) & summary["is_baseline"]]
    if cands.empty:
        return None, f"no baseline condition for model {cond['model']}"
    mine = _compared_ablation(cond["ablation"])
    scored = []
    for i, b in cands.iterrows():
        theirs = _compared_ablation(b["ablation"])
        shared = set(mine) & set(theirs)
        if any(mine[k] != theirs[k] for k in shared):
            continue
        scored.append((len(shared), -len(set(theirs) - shared), b["condition"] == "baseline", i))
    if not scored:
        return None, "no baseline condition with the same ablation values"
    scored.sort(key=lambda t: t[:3], reverse=True)
    if len(scored) > 1 and scored[0][:3] == scored[1][:3]:
        return None, "several baseline conditions fit equally; not tested"
    return scored[0][3], None


def _compared_ablation(ablation: str) -> dict:
    """The ablation values a baseline must share. A tuned confirm run's other keys are its own winning
    hyperparameters, not a sweep: tuned runs are compared with the tuned baseline, untuned with untuned."""
    values = json.loads(ablation)
    return {"tuned": values["tuned"]} if "tuned" in values else values


@dataclass
class PairedTest:
    metric: str
    n: int
    seeds: list[int]
    mean_diff: float
    t: float
    p: float
    note: str | None  # why no p-value, or None


def paired_test(cond_runs: pd.DataFrame, base_runs: pd.DataFrame, metric: str) -> PairedTest:
    """Paired t-test over seeds present in both conditions (scipy.stats.ttest_rel(condition, baseline))."""
    merged = cond_runs[["seed", metric]].merge(base_runs[["seed", metric]], on="seed", suffixes=("_c", "_b"))
    merged = merged.dropna().drop_duplicates("seed").sort_values("seed")
    a, b = merged[f"{metric}_c"].to_numpy(float), merged[f"{metric}_b"].to_numpy(float)
    seeds = merged["seed"].astype(int).tolist()
    n = len(seeds)
    diff = float(np.mean(a - b)) if n else math.nan
    if n < 2:
        return PairedTest(metric, n, seeds, diff, math.nan, math.nan,
                          f"only {n} matched seed{'s' if n != 1 else ''} among the included runs; "
                          "a paired test needs at least 2")
    if np.ptp(a - b) == 0:
        return PairedTest(metric, n, seeds, diff, math.nan, math.nan,
                          "the paired differences are identical across seeds; t is undefined")
    res = sps.ttest_rel(a, b)
    return PairedTest(metric, n, seeds, diff, float(res.statistic), float(res.pvalue), None)


def _included(runs: pd.DataFrame, include_incomplete: bool) -> pd.DataFrame:
    use = runs[runs["usable"]]
    return use if include_incomplete else use[use["complete"]]


def condition_table(runs: pd.DataFrame, include_incomplete: bool = False) -> pd.DataFrame:
    """One row per condition: mean/std per metric, seeds, complete/incomplete counts, tests vs baseline."""
    usable = runs[runs["usable"]]
    if usable.empty:
        return pd.DataFrame(columns=["condition_key", "name", "model", "n_seeds"])
    included = _included(runs, include_incomplete)
    rows = []
    for key, grp in usable.groupby("condition_key", sort=False):
        inc = included[included["condition_key"] == key]
        first = grp.iloc[0]
        row = {
            "condition_key": key, "condition": first["condition"], "strategy": first["strategy"],
            "strategy_params": first["strategy_params"], "ablation": first["ablation"], "model": first["model"],
            "n_seeds": len(inc), "seeds": ",".join(str(int(s)) for s in sorted(inc["seed"])),
            "runs_complete": int(grp["complete"].sum()), "runs_incomplete": int((~grp["complete"]).sum()),
            "epochs_total": int(grp["epochs_total"].max()),
        }
        for m in AGG_METRICS:
            vals = inc[m].dropna()
            row[f"{m}_mean"] = float(vals.mean()) if len(vals) else math.nan
            row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
        for c in ARCH_COLUMNS:
            vals = grp[c].dropna()
            row[c] = float(vals.iloc[0]) if len(vals) else math.nan
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary["is_baseline"] = [is_baseline(s) for s in summary["strategy_params"]]
    summary.insert(1, "name", _display_names(summary))
    # Sort: per model, baseline first, then by name, so tables read like the paper's.
    summary = summary.sort_values(["model", "is_baseline", "name"], ascending=[True, False, True],
                                  kind="stable").reset_index(drop=True)
    _add_tests(summary, included)
    return summary


def _add_tests(summary: pd.DataFrame, included: pd.DataFrame) -> None:
    cols = {"baseline": [], "n_paired": [], "paired_seeds": [], "test_note": []}
    for m in TESTED_METRICS:
        cols |= {f"diff_{m}": [], f"t_{m}": [], f"p_{m}": []}
    for _, cond in summary.iterrows():
        tests, base_name, note = {}, None, None
        if cond["is_baseline"]:
            note = "baseline"
        else:
            bi, note = _baseline_for(cond, summary)
            if bi is not None:
                base = summary.loc[bi]
                base_name = base["name"]
                c_runs = included[included["condition_key"] == cond["condition_key"]]
                b_runs = included[included["condition_key"] == base["condition_key"]]
                tests = {m: paired_test(c_runs, b_runs, m) for m in TESTED_METRICS}
                note = tests[TESTED_METRICS[0]].note
        first = tests.get(TESTED_METRICS[0])
        cols["baseline"].append(base_name)
        cols["n_paired"].append(first.n if first else 0)
        cols["paired_seeds"].append(",".join(map(str, first.seeds)) if first else "")
        cols["test_note"].append(note)
        for m in TESTED_METRICS:
            t = tests.get(m)
            cols[f"diff_{m}"].append(t.mean_diff if t else math.nan)
            cols[f"t_{m}"].append(t.t if t else math.nan)
            cols[f"p_{m}"].append(t.p if t else math.nan)
    for k, v in cols.items():
        summary[k] = v


def summarize(study: Study, include_incomplete: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, summary) for a loaded study."""
    runs = run_table(study)
    summary = condition_table(runs, include_incomplete)
    if len(summary) and "is_baseline" in summary:
        add_throughput(summary, study.bench)
    return runs, summary
