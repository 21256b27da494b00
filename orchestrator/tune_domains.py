"""The engine's half of a `tune:` block (jobs.tune_space): each distribution as a Ray Tune domain, and the
check that a fresh start does not overwrite the trials of an earlier one."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from jobs.tune_space import TRIALS_FOLDER, TuneBlock

# keyed like jobs.tune_space.DISTRIBUTIONS (tests/test_tune_study.py checks both name the same distributions)
DOMAINS: dict[str, Callable[[Any], Any]] = {
    "loguniform": lambda a: tune.loguniform(*a),
    "uniform": lambda a: tune.uniform(*a),
    "choice": tune.choice,
    "grid": tune.grid_search,
}


def param_space(block: TuneBlock) -> dict[str, Any]:
    """Tune's param_space: the dotted keys stay flat (Tune's config is one level deep here)."""
    return {key: DOMAINS[name](args) for key, (name, args) in ((k, block.distribution(k)) for k in block.space)}


def tuning_started(study_dir: str | Path) -> str | None:
    """Why a fresh (not --resume) start must refuse: trials of an earlier start are on disk."""
    folder = Path(study_dir) / TRIALS_FOLDER
    if folder.is_dir() and any(folder.iterdir()):
        return f"tuning trials already exist in {folder}; pass --resume to continue, or set another study"
    return None
