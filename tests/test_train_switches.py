"""The timm-exact recipe switches on the training loop (CPU): the schedule stepped per epoch as timm's
train.py does without --sched-on-updates, float16 autocast with a GradScaler whose state resumes
exactly, and the effective learning rate with its rule printed at start."""
from __future__ import annotations

import argparse
import math

import pytest
import torch
from timm.scheduler import create_scheduler

from jobs import checkpoint_files as ckpt
from jobs.train import Hooks
from rundir import CHECKPOINT_DIR, EVENTS_FILE
from tests.tiny import run_local, stable_rows, tiny_spec

RECIPE = (
    "model.drop_path_rate=0.1", "train.epochs=3", "train.batch_size=256", "train.grad_accum=2", "train.lr=5e-3",
    "train.warmup_epochs=1", "train.mixup=0.8", "train.cutmix=1.0", "train.ema=true", "train.ema_decay=0.9",
    "checkpoint.every_steps=2",
)
UPDATES_PER_EPOCH = 3  # 6 micro-batches (the last one odd-sized), 2 per update


class Killed(Exception):
    """Raised from a hook to stop a run the way a killed worker would."""


def timm_train_py_lrs(spec, epochs: int, updates_per_epoch: int) -> list[float]:
    """The lr of every optimizer update as timm's train.py sets it: its scheduler from its own argparse
    fields, `step_update` after every update and `step(epoch + 1)` after every epoch."""
    t = spec.train
    args = argparse.Namespace(sched=t.sched, epochs=t.epochs, warmup_epochs=t.warmup_epochs, warmup_lr=t.warmup_lr,
                              min_lr=t.min_lr, sched_on_updates=t.sched_on_updates)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=t.scaled_lr(1))
    scheduler, _ = create_scheduler(args, optimizer, updates_per_epoch=updates_per_epoch)
    lrs, num_updates = [], 0
    for epoch in range(epochs):
        for _ in range(updates_per_epoch):
            lrs.append(optimizer.param_groups[0]["lr"])
            num_updates += 1
            scheduler.step_update(num_updates=num_updates)
        scheduler.step(epoch + 1)
    return lrs


def lr_recorder(lrs: list[float]) -> Hooks:
    return Hooks(before_update=lambda state: lrs.append(state.optimizer.param_groups[0]["lr"]))


def test_schedule_per_epoch_is_timms_and_resumes_exactly(demo_data, tmp_path, capsys):
    spec = tiny_spec(demo_data, tmp_path / "epoch", *RECIPE, "train.sched_on_updates=false")
    lrs: list[float] = []
    run_local(spec, lr_recorder(lrs))
    expected = timm_train_py_lrs(spec, 3, UPDATES_PER_EPOCH)
    assert lrs == expected
    assert lrs[:UPDATES_PER_EPOCH] == [spec.train.warmup_lr] * UPDATES_PER_EPOCH  # epoch 0 entirely at warmup_lr
    assert len(set(lrs[UPDATES_PER_EPOCH:2 * UPDATES_PER_EPOCH])) == 1 and lrs[3] > lrs[6] > 0
    # the effective lr and its rule, at start: in the events log and on the console
    rule = "lr 0.005 = train.lr 0.005 as given (lr_scale none"
    assert rule in (spec.run_dir / EVENTS_FILE).read_text()
    assert rule in capsys.readouterr().out and "stepped per epoch" in spec.train.lr_rule(1)

    # Per update (kept available): timm's --sched-on-updates values, the warmup inside epoch 0.
    per_update = tiny_spec(demo_data, tmp_path / "update", *RECIPE, "train.sched_on_updates=true", "train.epochs=1")
    lrs_u: list[float] = []
    run_local(per_update, lr_recorder(lrs_u))
    assert lrs_u == timm_train_py_lrs(per_update, 1, UPDATES_PER_EPOCH)
    assert lrs_u[0] == spec.train.warmup_lr and lrs_u[1] > lrs_u[0]

    # Killed mid-epoch 2 after the step checkpoint of update 4: the resumed run continues at that
    # epoch's lr and ends bitwise equal to the uninterrupted one.
    resumed = tiny_spec(demo_data, tmp_path / "resumed", *RECIPE, "train.sched_on_updates=false")
    seen: list[float] = []

    def kill(state):
        if state.num_updates == 5:
            raise Killed

    hooks = lr_recorder(seen)
    hooks.after_step = kill
    with pytest.raises(Killed):
        run_local(resumed, hooks)
    assert ckpt.read_manifest(ckpt.latest_valid(resumed.run_dir / CHECKPOINT_DIR))["num_updates"] == 4
    after: list[float] = []
    run_local(resumed, lr_recorder(after))
    assert seen[:4] + after == expected
    assert stable_rows(resumed.run_dir) == stable_rows(spec.run_dir)


def test_float16_grad_scaler_state_resumes_exactly(demo_data, tmp_path):
    # float16 autocast on the CPU gets the same torch.amp.GradScaler logic as on CUDA. An inf written into
    # a gradient at update 2 makes the scaler skip that step and halve its scale: a resume after it
    # must continue from the checkpointed scale, not a fresh one.
    extra = ("train.amp=true", "train.amp_cpu=true", "train.amp_dtype=float16", "train.sched_on_updates=false")
    spec = tiny_spec(demo_data, tmp_path / "reference", *RECIPE, *extra)

    def hooks(scales: list[float], kill_at: int | None = None) -> Hooks:
        def poison(state):
            if state.num_updates == 1:  # the second update
                with torch.no_grad():
                    state.model.head.weight.grad[0, 0] = math.inf

        def record(state):
            scales.append(state.parts.scaler.get_scale())
            if state.num_updates == kill_at:
                raise Killed

        return Hooks(before_update=poison, after_step=record)

    scales: list[float] = []
    run_local(spec, hooks(scales))
    init = torch.amp.GradScaler("cpu").get_scale()
    assert scales[0] == init and scales[1] == init / 2  # the skipped step backed the scale off
    assert len(scales) == 3 * UPDATES_PER_EPOCH

    resumed = tiny_spec(demo_data, tmp_path / "resumed", *RECIPE, *extra)
    before: list[float] = []
    with pytest.raises(Killed):
        run_local(resumed, hooks(before, kill_at=5))
    latest = ckpt.latest_valid(resumed.run_dir / CHECKPOINT_DIR)
    saved = ckpt.load_file(latest, "train_state.pt")["scaler"]
    assert saved["scale"] == scales[3] == init / 2 and "_growth_tracker" in saved
    after: list[float] = []
    run_local(resumed, hooks(after))
    assert before[:4] + after == scales
    assert stable_rows(resumed.run_dir) == stable_rows(spec.run_dir)
