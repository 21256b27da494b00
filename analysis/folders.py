"""Which folders of a study directory are runs, and what a run's spec.yaml says about it.

Light on purpose (the standard library, yaml and rundir): `analysis status` lists a 500-run study with these
and never imports pandas.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from rundir import METRICS_FILE, RUN_MARKERS, SPEC_FILE, STATUS_FILE


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
