"""`python -m analysis status STUDY_DIR`: one line per run for watching a sweep.

Reads each run's status.json and metrics.parquet only; a run without either is still shown.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import yaml

from analysis.load import read_study
from analysis.stats import run_table
from rundir import SPEC_FILE, blocker, dependencies, index_nodes, node_from_spec, read_index

COLUMNS = ("run", "condition", "seed", "state", "epochs", "last top-1", "best top-1", "updated", "note")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def status_rows(study_dir: str | Path, now: float | None = None) -> list[dict[str, str]]:
    study = read_study(study_dir)
    runs = run_table(study)
    now = time.time() if now is None else now
    last_rows = (study.metrics.sort_values("epoch").groupby("run_id").tail(1).set_index("run_id")
                 if len(study.metrics) else pd.DataFrame())
    deps = study_dependencies(study_dir, study.runs)
    stuck = {run.run_id: run.state for run in study.runs if run.state in ("failed", "blocked")}
    out = []
    for run, (_, r) in zip(study.runs, runs.iterrows()):
        status = run.status or {}
        done = r["epochs_done"]
        total = r["epochs_total"]
        updated = status.get("updated")
        if updated is None and run.run_id in last_rows.index:
            updated = last_rows.loc[run.run_id, "wall_time"]
        note = status.get("error") if status.get("state") == "failed" else None
        note = note or r["problem"] or ""
        by = blocker(run.run_id, deps, stuck) if run.state not in ("finished", "failed", "blocked") else None
        if by is not None:
            note = f"blocked by {by}"
        out.append({
            "run": run.run_id,
            "condition": str(r["condition"]) if isinstance(r["condition"], str) else "?",
            "seed": str(int(r["seed"])) if pd.notna(r["seed"]) else "?",
            "state": r["state"] if r["usable"] or status.get("state") or run.planned_only else "no metrics",
            "epochs": f"{int(done) if pd.notna(done) else 0}/{int(total) if pd.notna(total) else '?'}",
            "last top-1": f"{r['final_top1']:.2f}" if pd.notna(r["final_top1"]) else "–",
            "best top-1": f"{r['peak_top1']:.2f}" if pd.notna(r["peak_top1"]) else "–",
            "updated": _age(now - float(updated)) if updated is not None and pd.notna(updated) else "–",
            "note": " ".join(str(note).split())[:120],
        })
    return out


def format_status(rows: list[dict[str, str]], study_dir: str | Path) -> str:
    if not rows:
        return f"{study_dir}: no run folders yet"
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS).rstrip() for r in rows]
    counts = pd.Series([r["state"] for r in rows]).value_counts()
    lines.append(f"{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def watch(study_dir: str | Path, interval: float) -> None:
    """Reprint the status every `interval` seconds until interrupted."""
    try:
        while True:
            text = format_status(status_rows(study_dir), study_dir)
            print("\033[2J\033[H" + time.strftime("%H:%M:%S ") + str(study_dir) + "\n" + text, flush=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


def study_dependencies(study_dir: str | Path, runs) -> dict[str, list[str]]:
    """run_id -> the runs it needs: from runs.json (every planned run), else from the runs' spec.yaml files."""
    index, _ = read_index(study_dir)
    if index:
        return dependencies(index_nodes(index))
    nodes = []
    for run in runs:
        try:
            raw = yaml.safe_load((Path(run.path) / SPEC_FILE).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(raw, dict):
            nodes.append(node_from_spec(run.run_id, raw))
    return dependencies(nodes)
