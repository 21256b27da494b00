"""What runs inside the Slurm jobs of a tuned study besides the trials (plain SlurmRun jobs): the selection job
that picks each condition's winner from its trials' held-out metric and writes tuning/tuning.json, and the
confirm runs, which read their condition's winner from that file when they start (and again on a requeue).

So no process on the login node has to stay alive between the stages: Slurm's dependencies chain them
(trials -> `afterany` -> selection -> `afterok` -> confirm), and the file is the hand-over.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from jobs.spec import RunSpec
from jobs.tune_space import TRIALS_FOLDER, Scheduler, TuneBlock
from orchestrator.slurm_job import SlurmRun
from orchestrator.tune_study import images_per_epoch, summary_path, write_summary
from rundir import check_metrics, run_state


def trial_entry(spec: RunSpec, block: TuneBlock) -> dict[str, Any]:
    """One trial of tuning.json from its run folder. Slurm stops no trial early: finished or error."""
    table, errors, _ = check_metrics(spec.run_dir)
    values = [] if errors or table is None else [v for v in table.column(block.metric).to_pylist() if v is not None]
    epochs = [] if errors or table is None else table.column("epoch").to_pylist()
    done = max(epochs, default=0)
    per_epoch = images_per_epoch(spec)
    pick = max if block.mode == "max" else min
    return {"run_id": spec.run_id, "trial_id": f"slurm_{spec.run_id}", "params": dict(spec.ablation),
            "status": "finished" if run_state(spec.run_dir, spec.train.epochs).finished else "error",
            "metric": values[-1] if values else None, "best_metric": pick(values) if values else None,
            "epochs_done": done, "epochs": spec.train.epochs, "images_per_epoch": per_epoch,
            "images": done * per_epoch}


def winner(trials: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    """The finished trial with the best last-reported metric (Tune's scope='last'); ties: the lower index."""
    scored = [t for t in trials if t["status"] == "finished" and t["metric"] is not None
              and math.isfinite(t["metric"])]
    sign = -1.0 if mode == "max" else 1.0
    return min(scored, key=lambda t: (sign * t["metric"], t["run_id"]), default=None)


class SelectWinners:
    """The selection job: every condition's trials -> tuning.json. Fails (so Slurm drops the confirm jobs that
    wait on it) when a condition has no finished trial, naming the trials' folders."""

    def __init__(self, study_dir: str, block: dict[str, Any], trials: dict[str, list[dict[str, Any]]]):
        self.study_dir = study_dir
        self.block = block    # TuneBlock as JSON
        self.trials = trials  # condition -> trial run specs as JSON, in trial order

    def __call__(self) -> dict[str, Any]:
        # Slurm stopped no trial early: the summary says so whatever scheduler the study asked Tune for.
        block = TuneBlock.model_validate(self.block).model_copy(update={"scheduler": Scheduler(name="none")})
        conditions: dict[str, Any] = {}
        missing = []
        for cond, specs in self.trials.items():
            entries = [trial_entry(RunSpec.model_validate(s), block) for s in specs]
            best = winner(entries, block.mode)
            conditions[cond] = {
                "done": True, "trials": entries, "best": best["params"] if best else None,
                "best_trial": best["run_id"] if best else None, "best_metric": best["metric"] if best else None}
            if best is None:
                missing.append(cond)
        write_summary(Path(self.study_dir), block, conditions)
        if missing:
            raise RuntimeError(f"no finished tuning trial for condition(s) {', '.join(missing)} (see "
                               f"{Path(self.study_dir) / TRIALS_FOLDER}); their confirm runs cannot start")
        return {c: v["best"] for c, v in conditions.items()}


def read_winner(study_dir: Path | str, condition: str) -> dict[str, Any]:
    path = summary_path(Path(study_dir))
    doc = json.loads(path.read_text())
    best = (doc.get("conditions", {}).get(condition) or {}).get("best")
    if best is None:
        raise RuntimeError(f"{path} has no winner for condition {condition}")
    return best


class ConfirmRun(SlurmRun):
    """A tuned confirm run: the condition's base recipe with the winner's values, read from tuning.json when the
    job starts (the selection job wrote it; Slurm started this job only after that succeeded)."""

    @property
    def run_spec(self) -> RunSpec:
        from jobs.study_expand import with_values

        base = RunSpec.model_validate(self.spec)
        best = read_winner(base.run_dir.parent, base.condition)
        return with_values(base, best, ablation={"tuned": True, **best})
