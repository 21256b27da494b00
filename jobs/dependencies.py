"""A run that starts from, or learns from, another run of the same study (`run:<condition>`): finding that run's
verified best export when the run starts. The rules that say which run that is (and what a study may name) are
rundir.stages'; the runs are found by their recorded specs (rundir.record).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jobs import checkpoint_files as ckpt
from rundir import BEST_DIR, CHECKPOINT_DIR, RunRecord, find_runs, part_of, run_source


def find_run(study_dir: Path, condition: str, seed: int, ablation: Mapping[str, Any]) -> RunRecord | None:
    """The run of `condition` with `seed` whose grid point is part of `ablation`, if it started."""
    for record in find_runs(study_dir):
        spec = record.spec
        if spec is not None and spec.condition == condition and spec.seed == seed and part_of(spec.ablation, ablation):
            return record
    return None


def resolve_run_export(study_dir: Path, condition: str, seed: int, ablation: Mapping[str, Any]) -> Path | str:
    """The verified best export (`checkpoints/best/model.pt`) of the run `run:<condition>` names, or a
    one-line reason it cannot be used yet."""
    record = find_run(study_dir, condition, seed, ablation)
    where = f"{run_source(condition)} (seed {seed}, grid {json.dumps(dict(ablation), sort_keys=True, default=str)})"
    if record is None:
        return (f"{where} has not started in {study_dir} (no run folder with a matching spec.json); run that "
                "condition first, or resume it once if it ran before runs recorded spec.json")
    status = record.status or {}
    if status.get("state") != "finished":
        return (f"{where} is {status.get('state', 'not started')} in {record.run_dir}, not finished; "
                f"let it finish (or resume it) first")
    best = record.best_export
    if best is None:
        return (f"{where} finished without a best export in {record.run_dir / CHECKPOINT_DIR / BEST_DIR}; "
                "rerun it with checkpoint.best=true")
    problem = ckpt.verify(best.parent)
    if problem:
        return f"{where}: its best export is damaged ({problem}); rerun {record.run_id}"
    return best


def export_meta(weights: Path) -> dict[str, Any]:
    """What `export_best` recorded next to a best export: model, create_kwargs, strategies, epoch, metric."""
    return ckpt.read_manifest(Path(weights).parent)


def run_sources(spec: Any) -> dict[str, Any]:
    """{field: source string} of a RunSpec's starting weights and teacher, for rundir's `check_dependencies`."""
    return {"model.init": spec.model.init,
            "distill.teacher.init": spec.distill.teacher.init if spec.distill is not None else None}
