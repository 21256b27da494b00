"""A tuned study on Slurm without a cluster: the configs sampled ahead and the limits said before submitting.
(The study's stages on the real Slurm: tests/test_slurm_stages.py.)"""
from __future__ import annotations

from jobs.tune_space import TuneBlock
from orchestrator.slurm_tune import limits, sample_ahead
from orchestrator.slurm_tune_job import winner

SPACE = {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}, "train.warmup_epochs": {"grid": [0, 1]}}


def test_sampled_ahead_like_tunes_seeded_search():
    block = TuneBlock.model_validate({"space": SPACE, "trials": 3, "seed": 7})
    configs = sample_ahead(block)
    assert len(configs) == 6 and [c["train.warmup_epochs"] for c in configs] == [0, 1] * 3  # trials x grid
    assert all(1e-4 <= c["train.lr"] <= 1e-2 for c in configs) and len({c["train.lr"] for c in configs}) == 6
    assert sample_ahead(block) == configs  # the same seed, the same configs
    assert sample_ahead(block.model_copy(update={"seed": 8})) != configs


def test_limits_are_said_and_winner_is_the_best_last_metric():
    plain = TuneBlock.model_validate({"space": SPACE, "trials": 1, "scheduler": {"name": "none"}})
    assert limits(plain) == []
    lines = limits(TuneBlock.model_validate({"space": {"train.lr": {"uniform": [0.1, 0.2]}}, "trials": 1,
                                             "search": "optuna", "max_concurrent": 2}))
    assert lines[0].startswith("no early stopping on Slurm (tune.scheduler asha)")
    assert lines[1].startswith("no adaptive search on Slurm (tune.search optuna)")
    assert "--array-parallelism" in lines[2] and len(lines) == 3
    trials = [{"run_id": "c-t000", "status": "finished", "metric": 50.0},
              {"run_id": "c-t001", "status": "error", "metric": 90.0},
              {"run_id": "c-t002", "status": "finished", "metric": 60.0},
              {"run_id": "c-t003", "status": "finished", "metric": 60.0}]
    assert winner(trials, "max")["run_id"] == "c-t002"  # errors never win; ties go to the lower index
    assert winner(trials, "min")["run_id"] == "c-t000"
    assert winner(trials[1:2], "max") is None
