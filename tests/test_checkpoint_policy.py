"""The Checkpointer on its own (no training loop): when it saves, what a restore brings back (weights,
optimizer, generators, position, best), which checkpoint it picks, quarantine, and the best export."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from timm.utils import ModelEmaV3
from torch import nn

from jobs import checkpoint_files as ckpt
from jobs.checkpoint_policy import CheckpointConfig, Checkpointer, Position, Trainables, choose
from jobs.local import LocalContext


def make(tmp_path, seed: int = 0, **config) -> tuple[Checkpointer, Trainables, list]:
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    parts = Trainables(model, ModelEmaV3(model, decay=0.5), torch.optim.AdamW(model.parameters(), lr=0.1), None, None)
    events: list = []
    ctx = LocalContext(tmp_path / "run", use_gpu=False)
    identity = {"model": "linear", "strategies": [], "create_kwargs": {}, "seed": 7}
    cfg = CheckpointConfig(**config)
    return Checkpointer(cfg, ctx, torch.device("cpu"), parts, identity, cfg.resolved_best_metric(True),
                        lambda kind, text: events.append((kind, text))), parts, events


def step(parts: Trainables) -> None:
    parts.model(torch.randn(2, 4)).sum().backward()
    parts.optimizer.step()
    parts.optimizer.zero_grad()
    parts.ema.update(parts.model)


def test_policy_from_the_checkpoint_block():
    cfg = CheckpointConfig(every_epochs=2, every_steps=3)
    assert (cfg.resolved_best_metric(ema=True), cfg.resolved_best_metric(ema=False)) == ("ema_top1", "top1")
    assert CheckpointConfig(best_metric="top1").resolved_best_metric(ema=True) == "top1"
    cp = Checkpointer.__new__(Checkpointer)
    cp.config = cfg
    assert [e for e in range(1, 6) if cp.due_at_epoch_end(e, epochs=5)] == [2, 4, 5]  # and always the last
    # every 3rd update, but not on the epoch's last batch (the epoch checkpoint follows it)
    assert [cp.due_mid_epoch(n, batch=n * 2, batches=12) for n in (3, 4, 6)] == [True, False, False]
    cp.config = CheckpointConfig()
    assert not cp.due_mid_epoch(3, 1, 10)


def test_save_restore_roundtrip_and_numbering(tmp_path):
    cp, parts, events = make(tmp_path, keep_last=2)
    assert choose(cp.ctx) is None  # nothing yet: start fresh
    step(parts)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    first = cp.save(Position(0, 4, 2), {"loss_sum": 1.5})
    expect_draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    step(parts)
    weights = {k: v.clone() for k, v in parts.model.state_dict().items()}
    ema = {k: v.clone() for k, v in parts.ema.module.state_dict().items()}
    second = cp.save(Position(1, 0, 3), {"loss_sum": 2.5})
    assert (first.name, second.name) == ("ckpt-000001", "ckpt-000002") and cp.last == second
    assert ckpt.read_manifest(second)["num_updates"] == 3 and ckpt.read_manifest(second)["model"] == "linear"

    fresh, fparts, _ = make(tmp_path, seed=1)
    chosen = choose(fresh.ctx)
    assert chosen == second
    pos, sums = fresh.restore(chosen, updates_per_epoch=3)
    assert (pos, sums, fresh.resumed_from, fresh.number) == (Position(1, 0, 3), {"loss_sum": 2.5}, 1, 2)
    for k, v in fparts.model.state_dict().items():
        assert torch.equal(v, weights[k])
    for k, v in fparts.ema.module.state_dict().items():
        assert torch.equal(v, ema[k])
    assert fparts.optimizer.state_dict()["state"][0]["step"] == 2

    # the generators continue where the saved rank left them
    fresh.restore(first, updates_per_epoch=3)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expect_draws
    assert fresh.save(Position(0, 5, 3), {}).name == "ckpt-000003"  # numbering continues after the newest
    assert [p.name for p in ckpt.numbered(fresh.dir)] == ["ckpt-000003", "ckpt-000002"]  # keep_last


def test_corrupt_newer_checkpoints_are_moved_aside_and_all_damaged_stops(tmp_path):
    cp, parts, events = make(tmp_path)
    good = cp.save(Position(1, 0, 1), {})
    bad = cp.save(Position(2, 0, 2), {})
    (bad / "model.pt").write_bytes(b"torn")
    with pytest.warns(RuntimeWarning, match="corrupt"):
        chosen = choose(cp.ctx)
    assert chosen == good and bad.exists()  # choosing moves nothing (a refused resume must leave the folder)
    cp.quarantine(chosen)
    assert not bad.exists() and any(p.name.startswith("corrupt-ckpt-000002") for p in cp.dir.iterdir())
    assert any(kind == "warning" and "moved to corrupt-" in text for kind, text in events)

    (good / "manifest.json").unlink()
    with pytest.warns(RuntimeWarning), pytest.raises(ckpt.CheckpointError, match="all 1 checkpoints .* are damaged"):
        choose(cp.ctx)
    assert (good / "model.pt").is_file() and (good / "train_state.pt").is_file()  # nothing moved or deleted


def test_best_export_follows_the_metric(tmp_path):
    cp, parts, _ = make(tmp_path)
    assert cp.record({"epoch": 1, "ema_top1": 10.0}) and cp.best.epoch == 1
    assert not cp.record({"epoch": 2, "ema_top1": math.nan})   # NaN never improves
    assert not cp.record({"epoch": 3, "ema_top1": None})
    step(parts)
    assert cp.record({"epoch": 4, "ema_top1": 12.0})
    meta = ckpt.read_manifest(cp.dir / ckpt.BEST_DIR)
    assert (meta["epoch"], meta["metric"], meta["value"], meta["model"]) == (4, "ema_top1", 12.0, "linear")
    best = torch.load(cp.dir / ckpt.BEST_DIR / ckpt.BEST_WEIGHTS, weights_only=True)
    for k, v in parts.ema.module.state_dict().items():  # the EMA's weights, as the metric is the EMA's
        assert torch.equal(best[k], v)
    off, _, _ = make(tmp_path / "off", best=False)
    assert off.record({"epoch": 1, "ema_top1": 5.0}) and not (off.dir / ckpt.BEST_DIR).exists()
