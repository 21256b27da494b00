"""Read a study directory: each run's metrics.parquet and status.json, and the study's bench.json.

Only files are read, so a study copied off the cluster is enough. Every run folder found is
accounted for: usable runs contribute rows, the others are listed with the reason.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.folders import find_run_dirs, run_info
from rundir import (
    BENCH_FILE,
    METRICS_FILE,
    METRICS_SCHEMA,
    RUNS_FILE,
    RunRecord,
    State,
    check_metrics,
    exception_line,
    read_index,
)
from rundir.metrics import REQUIRED_COLUMNS

# A run is one model/seed/configuration; rows that disagree on these cannot be one run.
CONSTANT_COLUMNS = ("model", "seed", "strategy_params", "ablation")
JSON_COLUMNS = ("strategy_params", "ablation")


@dataclass
class RunProblem:
    run: str
    reason: str
    excluded: bool  # True: the run's metrics are not used at all; False: a warning, the run is used


@dataclass
class RunFolder:
    run_id: str
    path: Path
    record: RunRecord | None = None  # what the folder holds (rundir.record); None for a planned run without one
    status: dict | None = None      # parsed status.json, None when absent or unreadable
    has_metrics: bool = False       # metrics.parquet exists
    usable: bool = False            # its rows made it into Study.metrics
    state: str = State.UNFINISHED.value  # rundir's run state; "pending" for a planned run without a folder
    info: dict = field(default_factory=dict)  # condition/seed/model/epochs_total from spec.json or runs.json


@dataclass
class BenchEntry:
    model: str
    device: str
    strategy: str
    img_s: float
    ratio: float
    mac_ratio: float
    params: float = math.nan  # parameters of the benchmarked model, when the bench recorded them


@dataclass
class Study:
    root: Path
    name: str
    metrics: pd.DataFrame           # usable rows of every run, METRICS_SCHEMA columns, one row per (run, epoch)
    runs: list[RunFolder]
    problems: list[RunProblem] = field(default_factory=list)
    bench: list[BenchEntry] = field(default_factory=list)

    def problems_of(self, run_id: str) -> list[RunProblem]:
        return [p for p in self.problems if p.run == run_id]


def canonical_json(text: str | None, default: str) -> str:
    """Same JSON value, same string: lets runs be grouped by their parameters regardless of key order."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or text == "":
        return default
    return json.dumps(json.loads(text), sort_keys=True)


def _is_spec_list(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("params", {}), dict)
        for s in value)


def _is_object(value) -> bool:
    return isinstance(value, dict)


def read_run_metrics(run_dir: Path) -> tuple[pd.DataFrame | None, list[str], list[str]]:
    """One run's rows as a frame, deduplicated per epoch. Returns (frame, errors, warnings); frame None on errors."""
    table, errors, warnings = check_metrics(run_dir)
    if errors:
        return None, errors, warnings
    if table.num_rows == 0:
        return None, [f"{METRICS_FILE} has no rows"], warnings
    df = table.to_pandas()
    for col in REQUIRED_COLUMNS:
        if df[col].isna().any():
            return None, [f"{METRICS_FILE} has empty {col} values"], warnings
    for col in JSON_COLUMNS:
        default = "[]" if col == "strategy_params" else "{}"
        try:
            df[col] = [canonical_json(v, default) for v in df[col]]
        except ValueError as exc:
            return None, [f"{METRICS_FILE} column {col} is not valid JSON ({exception_line(exc)})"], warnings
    for col, ok, what in (("strategy_params", _is_spec_list, 'a JSON list of {"name", "params"}'),
                          ("ablation", _is_object, "a JSON object")):
        bad = [v for v in df[col].unique() if not ok(json.loads(v))]
        if bad:
            return None, [f"{METRICS_FILE} column {col} must hold {what}, found {bad[0][:80]}"], warnings
    for col in CONSTANT_COLUMNS:
        values = df[col].dropna().unique()
        if len(values) > 1:
            shown = ", ".join(str(v) for v in values[:3])
            return None, [f"{METRICS_FILE} mixes several values of {col} ({shown}): rows of different runs?"], \
                warnings
    # Epoch 0 is the one row of a run evaluated as built (`train.epochs: 0`); trained epochs are 1-based.
    as_built = (df["epoch"] == 0) & (df["epochs_total"] == 0)
    if ((df["epoch"] < 1) & ~as_built).any():
        return None, [f"{METRICS_FILE} has epoch values below 1 (epochs are 1-based; 0 only with epochs_total 0)"], \
            warnings
    # A resumed run recomputes up to one checkpoint interval: the later rows of an epoch are the ones
    # its final state descends from.
    df["_order"] = range(len(df))
    dup = sorted(df.loc[df["epoch"].duplicated(keep="last"), "epoch"].unique().tolist())
    if dup:
        warnings.append(f"epochs {_ranges(dup)} recorded more than once (resumed run); the later rows are used")
    df = df.sort_values(["epoch", "_order"]).drop_duplicates("epoch", keep="last").drop(columns="_order")
    gaps = sorted(set(range(1, int(df["epoch"].max()) + 1)) - set(df["epoch"].tolist()))
    if gaps:
        warnings.append(f"epochs {_ranges(gaps)} have no row in {METRICS_FILE}")
    return df.reset_index(drop=True), [], warnings


def _ranges(values: list[int]) -> str:
    """[1,2,3,7] -> '1-3, 7'."""
    out, start, prev = [], None, None
    for v in values + [None]:
        if start is not None and (v is None or v != prev + 1):
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = None
        if v is not None and start is None:
            start = v
        prev = v
    return ", ".join(out)


def read_bench(study_dir: Path) -> tuple[list[BenchEntry], str | None]:
    """STUDY_DIR/bench.json as written by `python -m jobs bench --json` (one object or a list of them)."""
    path = study_dir / BENCH_FILE
    if not path.exists():
        return [], None
    try:
        doc = json.loads(path.read_text())
        docs = doc if isinstance(doc, list) else [doc]
        entries = []
        for d in docs:
            for r in d["results"]:
                entries.append(BenchEntry(
                    model=str(d["model"]), device=str(d.get("device_name") or d.get("device", "?")),
                    strategy=str(r["strategy"]), img_s=float(r["img_s"]), ratio=float(r.get("ratio", math.nan)),
                    mac_ratio=float(r.get("mac_ratio", math.nan)), params=float(r.get("params", math.nan)),
                ))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [], f"{BENCH_FILE} unreadable, throughput falls back to training img/s ({exception_line(exc, path)})"
    return entries, None


def read_study(study_dir: str | Path) -> Study:
    """Every run folder of a study directory, its usable metrics rows and the problems found."""
    root = Path(study_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"study directory {root} does not exist")
    runs, problems, frames = [], [], []
    index, index_problem = read_index(root)
    if index_problem:
        problems.append(RunProblem("(study)", index_problem, excluded=False))
    for run_dir in find_run_dirs(root):
        record = RunRecord.read(run_dir, index.get(run_dir.name))
        run = RunFolder(run_id=run_dir.name, path=run_dir, record=record, status=record.status,
                        info=run_info(record), state=record.state().state.value)
        runs.append(run)
        for problem in (record.status_problem, record.spec_problem):
            if problem:
                problems.append(RunProblem(run.run_id, problem, excluded=False))
        run.has_metrics = (run_dir / METRICS_FILE).exists()
        if not run.has_metrics:
            state = (run.status or {}).get("state")
            why = {"failed": f"failed before its first epoch ({(run.status or {}).get('error') or 'no error text'})",
                   "running": "running, no epoch finished yet"}.get(state, f"no {METRICS_FILE}")
            problems.append(RunProblem(run.run_id, why, excluded=True))
            continue
        df, errors, warnings = read_run_metrics(run_dir)
        problems += [RunProblem(run.run_id, w, excluded=False) for w in warnings]
        if errors:
            problems += [RunProblem(run.run_id, e, excluded=True) for e in errors]
            run.state = record.state().unreadable(errors[0]).state.value
            continue
        recorded = df["run_id"].dropna().unique().tolist()
        if recorded and recorded != [run.run_id]:
            problems.append(RunProblem(
                run.run_id, f"{METRICS_FILE} names run {recorded[0]!r}; the folder name is used", excluded=False))
        df["run_id"] = run.run_id
        run.usable = True
        frames.append(df)
    found = {r.run_id for r in runs}
    for run_id in sorted(set(index) - found):
        runs.append(RunFolder(run_id=run_id, path=root / run_id, info=dict(index[run_id]), state="pending"))
        problems.append(RunProblem(run_id, f"not started (planned in {RUNS_FILE}, no run folder yet)",
                                   excluded=True))
    metrics = (pd.concat(frames, ignore_index=True) if frames
               else METRICS_SCHEMA.empty_table().to_pandas())
    bench, bench_problem = read_bench(root)
    if bench_problem:
        problems.append(RunProblem("(study)", bench_problem, excluded=False))
    name = metrics["study"].dropna().iloc[0] if metrics["study"].notna().any() else root.name
    return Study(root=root, name=str(name), metrics=metrics, runs=runs, problems=problems, bench=bench)
