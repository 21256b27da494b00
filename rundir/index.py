"""The study index, `<study dir>/runs.json`: run_id -> {condition, ablation, seed} of every planned run, so
that tools can list runs that have not started yet and tell what each folder is."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rundir.atomic import atomic_write_text
from rundir.errors import exception_line
from rundir.names import RUNS_FILE


def write_index(study_dir: Path | str, runs: dict[str, dict[str, Any]]) -> Path:
    """Write the index of `runs` (run_id -> {condition, ablation, seed}); returns its path."""
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / RUNS_FILE
    atomic_write_text(path, json.dumps(runs, indent=1, sort_keys=True))
    return path


def read_index(study_dir: Path | str) -> tuple[dict[str, dict[str, Any]], str | None]:
    """(index, problem): ({}, None) without an index, ({}, one line) when it cannot be read."""
    path = Path(study_dir) / RUNS_FILE
    if not path.exists():
        return {}, None
    try:
        index = json.loads(path.read_text())
        if not isinstance(index, dict) or not all(isinstance(v, dict) for v in index.values()):
            raise ValueError("expected an object of run_id -> {condition, ablation, seed}")
    except (OSError, ValueError) as exc:
        return {}, f"{RUNS_FILE} unreadable, runs not started yet cannot be listed ({exception_line(exc, path)})"
    return index, None
