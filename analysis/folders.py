"""Which folders of a study directory are runs, and what a run's recorded spec says about it.

Light on purpose (the standard library and rundir): `analysis status` lists a 500-run study with these and
never imports pandas.
"""
from __future__ import annotations

from pathlib import Path

from rundir import METRICS_FILE, RUN_MARKERS, SPEC_FILE, SPEC_JSON, STATUS_FILE, RunRecord


def find_run_dirs(study_dir: Path) -> list[Path]:
    """Run folders: STUDY_DIR itself when it is one run, else its direct subfolders holding run files.

    Other subfolders (a report written inside the study, Ray's experiment state) hold none of the run
    files and are not runs.
    """
    if any((study_dir / m).exists() for m in (METRICS_FILE, SPEC_JSON, SPEC_FILE, STATUS_FILE)):
        return [study_dir]
    return sorted(
        p for p in study_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and any((p / m).exists() for m in RUN_MARKERS)
    )


def run_info(record: RunRecord) -> dict:
    """Condition, seed, ablation, model and epochs of a run: its recorded spec's, else its entry in runs.json."""
    info = dict(record.planned)
    spec = record.spec
    if spec is not None:
        recorded = {"condition": spec.condition, "seed": spec.seed, "ablation": spec.ablation or None,
                    "model": spec.model, "epochs_total": spec.epochs}
        info.update({k: v for k, v in recorded.items() if v is not None})
    return info
