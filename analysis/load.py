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
import pyarrow as pa
import pyarrow.dataset as ds

from analysis.schema import (
    BENCH_FILE,
    CHECKPOINT_DIR,
    EVENTS_FILE,
    METRICS_FILE,
    METRICS_SCHEMA,
    SPEC_FILE,
    STATUS_FILE,
)

# Without these a row cannot be placed in a condition or an epoch; every other column may be absent.
REQUIRED_COLUMNS = ("model", "seed", "epoch", "epochs_total", "top1")
# A run is one model/seed/configuration; rows that disagree on these cannot be one run.
CONSTANT_COLUMNS = ("model", "seed", "strategy_params", "ablation")
JSON_COLUMNS = ("strategy_params", "ablation")
RUN_MARKERS = (SPEC_FILE, METRICS_FILE, STATUS_FILE, EVENTS_FILE, CHECKPOINT_DIR)
# Written by orchestrator.study into the study dir: {run_id: {"condition", "ablation", "seed"}} for every
# planned run, so runs that have not started yet can be listed too.
RUNS_INDEX_FILE = "runs.json"
STATES = ("running", "finished", "failed")


@dataclass
class RunProblem:
    run: str
    reason: str
    excluded: bool  # True: the run's metrics are not used at all; False: a warning, the run is used


@dataclass
class RunFolder:
    run_id: str
    path: Path
    status: dict | None = None      # parsed status.json, None when absent or unreadable
    has_metrics: bool = False       # metrics.parquet exists
    usable: bool = False            # its rows made it into Study.metrics
    planned_only: bool = False      # listed in the study's runs.json, no folder yet
    info: dict = field(default_factory=dict)  # condition/seed/model/epochs_total from spec.yaml or runs.json


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


def _first_line(exc: BaseException, path: Path | None = None, limit: int = 160) -> str:
    """A one-line, bounded error text; the (already named) file's full path is dropped."""
    text = " ".join(str(exc).split())
    if path is not None:
        text = text.replace(f"'{path}'", path.name).replace(str(path), path.name)
    text = f"{type(exc).__name__}: {text}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def canonical_json(text: str | None, default: str) -> str:
    """Same JSON value, same string: lets runs be grouped by their parameters regardless of key order."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or text == "":
        return default
    return json.dumps(json.loads(text), sort_keys=True)


def find_run_dirs(study_dir: Path) -> list[Path]:
    """Run folders: STUDY_DIR itself when it is one run, else its direct subfolders holding run files.

    Other subfolders (a report written inside the study, Ray's experiment state) hold none of the run
    files and are not runs.
    """
    if any((study_dir / m).exists() for m in (METRICS_FILE, SPEC_FILE, STATUS_FILE)):
        return [study_dir]
    return sorted(
        p for p in study_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and any((p / m).exists() for m in RUN_MARKERS)
    )


def read_spec_info(run_dir: Path) -> dict:
    """Condition, seed, model and epochs of a run from its spec.yaml (for runs without metrics)."""
    import yaml

    try:
        spec = yaml.safe_load((run_dir / SPEC_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(spec, dict):
        return {}
    names = [s.get("name", "?") for s in spec.get("strategies") or [] if isinstance(s, dict)]
    model = spec.get("model")
    return {
        "condition": spec.get("condition") or "+".join(names) or "baseline",
        "seed": spec.get("seed"),
        "model": model.get("name") if isinstance(model, dict) else model,
        "epochs_total": (spec.get("train") or {}).get("epochs") if isinstance(spec.get("train"), dict) else None,
    }


def read_runs_index(study_dir: Path) -> tuple[dict[str, dict], str | None]:
    path = study_dir / RUNS_INDEX_FILE
    if not path.exists():
        return {}, None
    try:
        index = json.loads(path.read_text())
        if not isinstance(index, dict) or not all(isinstance(v, dict) for v in index.values()):
            raise ValueError("expected an object of run_id -> {condition, ablation, seed}")
    except (OSError, ValueError) as exc:
        return {}, f"{RUNS_INDEX_FILE} unreadable, runs not started yet cannot be listed ({_first_line(exc, path)})"
    return index, None


def read_status(run_dir: Path) -> tuple[dict | None, str | None]:
    path = run_dir / STATUS_FILE
    if not path.exists():
        return None, None
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"{STATUS_FILE} unreadable ({_first_line(exc, path)})"
    if not isinstance(status, dict):
        return None, f"{STATUS_FILE} is not a JSON object"
    if status.get("state") not in STATES:
        return status, f"{STATUS_FILE} has state {status.get('state')!r}, expected one of {', '.join(STATES)}"
    return status, None


def _conform(table: pa.Table) -> tuple[pa.Table | None, list[str], list[str]]:
    """Cast to METRICS_SCHEMA. Returns (table, errors, warnings); table is None when errors."""
    missing_required = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing_required:
        return None, [f"{METRICS_FILE} lacks required columns {', '.join(missing_required)}"], []
    warnings = []
    missing = [f.name for f in METRICS_SCHEMA if f.name not in table.column_names]
    if missing:
        warnings.append(f"{METRICS_FILE} lacks columns {', '.join(missing)} (treated as empty)")
    columns = []
    for f in METRICS_SCHEMA:
        if f.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        try:
            columns.append(col.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            return None, [f"{METRICS_FILE} column {f.name} has type {col.type}, expected {f.type} "
                          f"({_first_line(exc)})"], warnings
    return pa.Table.from_arrays(columns, schema=METRICS_SCHEMA), [], warnings


def _is_spec_list(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("params", {}), dict)
        for s in value)


def _is_object(value) -> bool:
    return isinstance(value, dict)


def read_metrics(run_dir: Path) -> tuple[pd.DataFrame | None, list[str], list[str]]:
    """One run's rows, deduplicated per epoch. Returns (frame, errors, warnings); frame None on errors."""
    path = run_dir / METRICS_FILE
    try:
        raw = ds.dataset(path, format="parquet").to_table()
    except (pa.ArrowException, OSError, ValueError) as exc:
        return None, [f"{METRICS_FILE} is not readable parquet ({_first_line(exc, path)})"], []
    table, errors, warnings = _conform(raw)
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
            return None, [f"{METRICS_FILE} column {col} is not valid JSON ({_first_line(exc)})"], warnings
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
    if (df["epoch"] < 1).any():
        return None, [f"{METRICS_FILE} has epoch values below 1 (epochs are 1-based)"], warnings
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
        return [], f"{BENCH_FILE} unreadable, throughput falls back to training img/s ({_first_line(exc, path)})"
    return entries, None


def load_study(study_dir: str | Path) -> Study:
    root = Path(study_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"study directory {root} does not exist")
    runs, problems, frames = [], [], []
    index, index_problem = read_runs_index(root)
    if index_problem:
        problems.append(RunProblem("(study)", index_problem, excluded=False))
    for run_dir in find_run_dirs(root):
        run = RunFolder(run_id=run_dir.name, path=run_dir)
        runs.append(run)
        run.info = {**index.get(run.run_id, {}), **read_spec_info(run_dir)}
        run.status, status_problem = read_status(run_dir)
        if status_problem:
            problems.append(RunProblem(run.run_id, status_problem, excluded=False))
        run.has_metrics = (run_dir / METRICS_FILE).exists()
        if not run.has_metrics:
            state = (run.status or {}).get("state")
            why = {"failed": f"failed before its first epoch ({(run.status or {}).get('error') or 'no error text'})",
                   "running": "running, no epoch finished yet"}.get(state, f"no {METRICS_FILE}")
            problems.append(RunProblem(run.run_id, why, excluded=True))
            continue
        df, errors, warnings = read_metrics(run_dir)
        problems += [RunProblem(run.run_id, w, excluded=False) for w in warnings]
        if errors:
            problems += [RunProblem(run.run_id, e, excluded=True) for e in errors]
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
        runs.append(RunFolder(run_id=run_id, path=root / run_id, planned_only=True, info=dict(index[run_id])))
        problems.append(RunProblem(run_id, f"not started (planned in {RUNS_INDEX_FILE}, no run folder yet)",
                                   excluded=True))
    metrics = (pd.concat(frames, ignore_index=True) if frames
               else METRICS_SCHEMA.empty_table().to_pandas())
    bench, bench_problem = read_bench(root)
    if bench_problem:
        problems.append(RunProblem("(study)", bench_problem, excluded=False))
    name = metrics["study"].dropna().iloc[0] if metrics["study"].notna().any() else root.name
    return Study(root=root, name=str(name), metrics=metrics, runs=runs, problems=problems, bench=bench)
