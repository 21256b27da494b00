"""`python -m analysis status STUDY_DIR`: one line per run for watching a sweep, and a count by state.

Fast on a study of hundreds of runs: per run it reads its record (rundir.record: spec.json, status.json) and
six columns of metrics.parquet (epoch, epochs_total, top1, wall_time, condition, seed); the state is rundir's
`run_state`, as for `--resume` and the report. It never imports pandas. The full validation of every column
(JSON parameters, one seed per file, ...) is the report's (`analysis.load.read_study`), which lists every problem.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from analysis.folders import find_run_dirs, run_info
from rundir import (
    METRICS_FILE,
    RUNS_FILE,
    RunRecord,
    State,
    blocker,
    dependencies,
    index_nodes,
    read_index,
)

COLUMNS = ("run", "condition", "seed", "state", "epochs", "last top-1", "best top-1", "updated", "note")
# What the status line shows; the other metrics columns are never read here.
PEEK_COLUMNS = ("epoch", "epochs_total", "top1", "wall_time", "condition", "seed")


@dataclass
class Peek:
    """What the status line needs from one run's metrics.parquet."""
    top1_by_epoch: dict[int, float | None] = field(default_factory=dict)  # later rows of an epoch win (resume)
    epochs_total: int | None = None
    wall_time: float | None = None  # of the last row written
    condition: str | None = None
    seed: int | None = None

    @property
    def done(self) -> int:
        return max(self.top1_by_epoch, default=0)


def peek_metrics(record: RunRecord) -> tuple[Peek | None, str | None]:
    """(peek, problem) from PEEK_COLUMNS of the run's metrics.parquet; (None, None) when there is no file."""
    if not (record.run_dir / METRICS_FILE).exists():
        return None, None
    table, errors, _ = record.metrics(PEEK_COLUMNS)
    if errors:
        return None, errors[0]
    if table.num_rows == 0:
        return None, f"{METRICS_FILE} has no rows"
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    if any(e is None for e in cols["epoch"]):
        return None, f"{METRICS_FILE} has empty epoch values"
    peek = Peek()
    for i, epoch in enumerate(cols["epoch"]):
        peek.top1_by_epoch[epoch] = cols["top1"][i]
    last = max(range(table.num_rows), key=lambda i: (cols["epoch"][i], i))
    totals = [t for t in cols["epochs_total"] if t is not None]
    peek.epochs_total = max(totals) if totals else None
    peek.wall_time, peek.condition, peek.seed = cols["wall_time"][last], cols["condition"][last], cols["seed"][last]
    return peek, None


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _pick(*values):
    return next((v for v in values if v is not None), None)


def run_row(record: RunRecord, now: float) -> dict[str, str]:
    """The status line of one run folder."""
    status = record.status or {}
    peek, metrics_problem = peek_metrics(record)
    state = record.state().unreadable(metrics_problem)
    info = run_info(record)
    condition = _pick(peek and peek.condition, info.get("condition"))
    seed = _pick(peek and peek.seed, info.get("seed"))
    total = _pick(state.epochs_total, info.get("epochs_total"))
    top1 = [v for v in (peek.top1_by_epoch.values() if peek else ()) if v is not None]
    last = peek.top1_by_epoch.get(peek.done) if peek else None
    updated = _pick(status.get("updated"), peek and peek.wall_time)
    note = state.reason if state.state in (State.FAILED, State.BLOCKED) else None
    if peek is None and state.state is not State.BLOCKED:
        note = note or {"running": "running, no epoch finished yet"}.get(status.get("state"), f"no {METRICS_FILE}")
    note = note or record.spec_problem or ""
    return {
        "run": record.run_id,
        "condition": str(condition) if condition is not None else "?",
        "seed": str(int(seed)) if isinstance(seed, (int, float)) else "?",
        "state": state.state.value,
        "epochs": f"{state.epochs_done}/{total if total is not None else '?'}",
        "last top-1": f"{last:.2f}" if last is not None else "–",
        "best top-1": f"{max(top1):.2f}" if top1 else "–",
        "updated": _age(now - float(updated)) if updated is not None else "–",
        "note": " ".join(str(note).split())[:120],
    }


def status_rows(study_dir: str | Path, now: float | None = None) -> list[dict[str, str]]:
    """One status line per run folder, then one per run planned in runs.json without a folder yet."""
    root = Path(study_dir)
    now = time.time() if now is None else now
    index, _ = read_index(root)  # an unreadable index: the report says so; status lists the folders
    dirs = find_run_dirs(root)
    records = [RunRecord.read(d, index.get(d.name)) for d in dirs]
    rows = [run_row(r, now) for r in records]
    found = {d.name for d in dirs}
    for run_id in sorted(set(index) - found):
        planned = index[run_id]
        seed = planned.get("seed")
        rows.append({"run": run_id, "condition": str(planned.get("condition") or "?"),
                     "seed": str(int(seed)) if isinstance(seed, (int, float)) else "?", "state": "pending",
                     "epochs": "0/?", "last top-1": "–", "best top-1": "–", "updated": "–",
                     "note": f"not started (planned in {RUNS_FILE}, no run folder yet)"})
    _note_blockers(rows, study_dependencies(records, index))
    return rows


def _note_blockers(rows: list[dict[str, str]], deps: dict[str, list[str]]) -> None:
    """A run that waits on a failed or blocked run upstream says `blocked by <run>`."""
    stuck = {r["run"]: r["state"] for r in rows if r["state"] in ("failed", "blocked")}
    for row in rows:
        if row["state"] not in ("finished", "failed", "blocked"):
            by = blocker(row["run"], deps, stuck)
            if by is not None:
                row["note"] = f"blocked by {by}"


def study_dependencies(records: list[RunRecord], index: dict) -> dict[str, list[str]]:
    """run_id -> the runs it needs: from runs.json (every planned run), else from the runs' recorded specs."""
    if index:
        return dependencies(index_nodes(index))
    return dependencies(r.spec.node(r.run_id) for r in records if r.spec is not None)


def format_status(rows: list[dict[str, str]], study_dir: str | Path) -> str:
    if not rows:
        return f"{study_dir}: no run folders yet"
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS).rstrip() for r in rows]
    counts = Counter(r["state"] for r in rows)
    lines.append(f"{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.most_common()))
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
