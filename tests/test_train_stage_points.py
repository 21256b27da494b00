"""`train.epochs: 0` (evaluate the model as built: one row at epoch 0 and the best export, the "pruned, before
recovery" point) and the cosine weight-decay schedule (DGMR's 0.04 -> 0.2), on the shipped digits (CPU)."""
from __future__ import annotations

import math
from pathlib import Path

import torch

import rundir
from jobs import checkpoint_files as ckpt
from jobs import recipe
from jobs.spec import TrainConfig
from jobs.train import Hooks
from rundir import CHECKPOINT_DIR, run_state
from tests.tiny import run_local, tiny_spec


def tiny(demo_data, out: Path, *extra: str):
    return tiny_spec(demo_data, out, "train.batch_size=256", "train.grad_accum=1", *extra, run_id="t")


def test_zero_epochs_evaluates_once_writes_row_0_and_the_best_export(demo_data, tmp_path):
    spec = tiny(demo_data, tmp_path, "train.epochs=0", "strategies=[{name: shallow, params: {keep_ratio: 0.5}}]")
    row = run_local(spec)
    rows = rundir.read_metrics(spec.run_dir).to_pylist()
    assert [r["epoch"] for r in rows] == [0]
    assert row["epoch"] == 0 and 0.0 <= rows[0]["top1"] <= 100.0 and math.isnan(rows[0]["train_loss"])
    best = spec.run_dir / CHECKPOINT_DIR / ckpt.BEST_DIR
    assert ckpt.verify(best) is None and ckpt.read_manifest(best)["epoch"] == 0
    assert run_state(spec.run_dir, 0).finished
    # Run again (a resume of the finished run): no second row.
    run_local(spec)
    assert [r["epoch"] for r in rundir.read_metrics(spec.run_dir).to_pylist()] == [0]


def test_weight_decay_follows_a_cosine_from_start_to_end():
    cfg = TrainConfig(weight_decay=0.04, weight_decay_end=0.2)
    values = [recipe.weight_decay_at(cfg, u, 10) for u in range(11)]  # update 10: past the end
    assert math.isclose(values[0], 0.04) and math.isclose(values[-1], 0.2)
    assert math.isclose(values[5], 0.12)  # half way: the mean of the two
    # DINOv2's CosineScheduler (DGMR): the last update runs a step short of the end
    assert math.isclose(values[9], 0.2 + 0.5 * (0.04 - 0.2) * (1 + math.cos(math.pi * 9 / 10)))
    assert all(a < b for a, b in zip(values, values[1:]))
    assert recipe.weight_decay_at(TrainConfig(weight_decay=0.05), 7, 11) == 0.05


def test_weight_decay_schedule_reaches_the_optimizer_and_spares_no_decay_groups(demo_data, tmp_path):
    spec = tiny(demo_data, tmp_path, "train.epochs=2", "train.weight_decay=0.04", "train.weight_decay_end=0.2",
                "train.ema=false")
    seen: list[list[float]] = []

    def record(state):
        seen.append([g["weight_decay"] for g in state.parts.optimizer.param_groups])

    run_local(spec, Hooks(after_step=record))
    total = len(seen)
    decayed = [max(groups) for groups in seen]
    assert all(min(groups) == 0.0 for groups in seen)  # norms and biases stay undecayed
    assert math.isclose(decayed[0], 0.04) and 0.19 < decayed[-1] < 0.2
    expected = [recipe.weight_decay_at(spec.train, u, total) for u in range(total)]
    assert torch.allclose(torch.tensor(decayed), torch.tensor(expected))
