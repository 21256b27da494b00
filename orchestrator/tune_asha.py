"""ASHA whose state survives a sweep-driver kill: a restored tuning experiment decides as the undisturbed one.

Tune 2.60 restores a Tuner's searcher but not its scheduler: TuneController.save_to_dir saves the searcher's state
only, and Tuner.restore unpickles the scheduler as it was given at the start, with empty rungs. A restored ASHA
would then let a restarted trial through a rung that stopped it before the kill (its replayed rows meet empty
rungs) and compare later trials against fewer results. So every decision is written (ASHA's own `save`) next to
the experiment when it is made, and read back by the restored scheduler before its first one; a result it has
decided on before (a restarted trial replaying its rows, orchestrator.tune_study) gets the same decision again.
"""
from __future__ import annotations

import os
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler


class RestorableASHA(ASHAScheduler):
    def __init__(self, state_path: str, **kwargs):
        super().__init__(**kwargs)
        self.decided_by = kwargs.get("time_attr", "training_iteration")  # ASHA's own default; public in kwargs only
        self.state_path = state_path
        self.decisions: dict[str, str] = {}  # "<trial id>@<epoch>" -> CONTINUE | STOP
        self.loaded = False

    def _load(self) -> None:
        if not self.loaded:
            path = self.state_path
            if Path(path).exists():
                self.restore(path)
            self.state_path, self.loaded = path, True  # where it is now (a study folder may have moved)

    def _save(self) -> None:
        tmp = f"{self.state_path}.tmp"
        Path(tmp).parent.mkdir(parents=True, exist_ok=True)
        self.save(tmp)
        os.replace(tmp, self.state_path)

    def on_trial_add(self, tune_controller, trial) -> None:
        self._load()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._load()
        key = f"{trial.trial_id}@{result.get(self.decided_by)}"
        if key not in self.decisions:
            self.decisions[key] = super().on_trial_result(tune_controller, trial, result)
            self._save()
        return self.decisions[key]

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._load()
        super().on_trial_complete(tune_controller, trial, result)
        self._save()
