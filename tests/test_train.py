"""The training loop on the shipped digits with a tiny grouped ViT (CPU): learning, EMA, checkpoints,
exact resume after kills at an epoch boundary and mid-epoch, corrupt-latest fallback, NaN stop."""
from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

import rundir as metrics
from jobs import checkpoint_files as ckpt
from jobs.local import LocalContext
from jobs.models import build_model
from jobs.spec import load_spec
from jobs.train import Hooks, NonFiniteLossError, Preempted, train_loop
from rundir import CHECKPOINT_DIR, EVENTS_FILE, METRICS_COLUMNS, SPEC_FILE
from tests.tiny import run_local, stable_rows, tiny_spec

# 6 micro-batches per epoch (the last one odd-sized), 3 updates; a step checkpoint at every 2nd
# update lands mid-epoch. Mixup, cutmix and drop-path are on, so their generators must resume too.
RECIPE = (
    "model.drop_path_rate=0.1", "strategies=[{name: grouped, params: {group_size: 2}}]",
    "train.epochs=3", "train.batch_size=256", "train.grad_accum=2", "train.lr=5e-3", "train.warmup_epochs=1",
    "train.mixup=0.8", "train.cutmix=1.0", "train.ema=true", "train.ema_decay=0.9",
    "checkpoint.every_steps=2", "checkpoint.keep_last=2",
)


class Killed(Exception):
    """Raised from a hook to stop a run the way a killed worker would."""


def rows(run_dir: Path) -> list[dict]:
    return metrics.read_metrics(run_dir).to_pylist()


@pytest.fixture(scope="module")
def reference(demo_data, tmp_path_factory):
    """An uninterrupted 3-epoch run."""
    spec = tiny_spec(demo_data, tmp_path_factory.mktemp("reference"), *RECIPE)
    run_local(spec)
    return spec


def test_uninterrupted_run_learns_and_writes_its_files(reference):
    run_dir = reference.run_dir
    table = rows(run_dir)
    assert [r["epoch"] for r in table] == [1, 2, 3]
    assert list(table[0]) == list(METRICS_COLUMNS)
    assert all(r[c] is not None for r in table for c in METRICS_COLUMNS if c != "resumed_from")
    assert table[-1]["train_loss"] < table[0]["train_loss"]
    first = table[0]
    assert (first["strategy"], first["unique_mlps"], first["epochs_total"], first["seed"]) == ("grouped", 1, 3, 0)
    assert json.loads(first["strategy_params"]) == [{"name": "grouped", "params": {"group_size": 2}}]
    assert all(0 <= r["top1"] <= r["top5"] <= 100 for r in table)
    assert load_spec(run_dir / SPEC_FILE) == reference
    assert metrics.read_status(run_dir)["state"] == "finished"
    events = (run_dir / EVENTS_FILE).read_text()
    assert "start:" in events and "epoch: 3/3" in events and "finish:" in events
    # keep_last=2: only the two newest numbered checkpoints remain, plus best/
    names = sorted(p.name for p in (run_dir / CHECKPOINT_DIR).iterdir())
    assert names == ["best", "ckpt-000005", "ckpt-000006"]


def test_ema_is_kept_evaluated_and_differs_from_the_model(reference):
    table = rows(reference.run_dir)
    assert all(r["ema_top1"] is not None and r["ema_top5"] is not None for r in table)
    last = ckpt.latest_valid(reference.run_dir / CHECKPOINT_DIR)
    model = ckpt.unpack_state(ckpt.load_file(last, "model.pt"))
    ema = ckpt.unpack_state(ckpt.load_file(last, "ema.pt"))
    assert model.keys() == ema.keys()
    assert any(not torch.equal(model[k], ema[k]) for k in model)


def test_checkpoint_stores_shared_mlp_once_and_best_loads_into_a_fresh_model(reference):
    run_dir = reference.run_dir
    last = ckpt.latest_valid(run_dir / CHECKPOINT_DIR)
    packed = ckpt.load_file(last, "model.pt")
    assert packed["aliases"]["blocks.1.mlp.fc2.weight"] == "blocks.0.mlp.fc2.weight"
    assert "blocks.1.mlp.fc2.weight" not in packed["tensors"]
    fresh = build_model(reference.model.name, reference.strategies, **reference.create_kwargs())
    ckpt.load_model_state(fresh, packed)
    assert fresh.blocks[1].mlp is fresh.blocks[0].mlp
    with torch.no_grad():
        fresh.blocks[0].mlp.fc1.weight.mul_(2.0)
    assert torch.equal(fresh.blocks[1].mlp.fc1.weight, fresh.blocks[0].mlp.fc1.weight)

    best_meta = ckpt.read_manifest(run_dir / CHECKPOINT_DIR / ckpt.BEST_DIR)
    assert best_meta["metric"] == "ema_top1"
    assert best_meta["value"] == max(r["ema_top1"] for r in rows(run_dir))
    state = torch.load(run_dir / CHECKPOINT_DIR / ckpt.BEST_DIR / ckpt.BEST_WEIGHTS, weights_only=True)
    model = build_model(best_meta["model"], best_meta["strategies"], **best_meta["create_kwargs"])
    model.load_state_dict(state)  # strict: a plain state dict of timm + strategy keys
    assert state["blocks.1.mlp.fc1.weight"].untyped_storage().data_ptr() == \
        state["blocks.0.mlp.fc1.weight"].untyped_storage().data_ptr()


def test_resume_is_exact_after_epoch_and_mid_epoch_kills_and_corrupt_latest(reference, demo_data, tmp_path):
    spec = tiny_spec(demo_data, tmp_path, *RECIPE)
    expected = stable_rows(reference.run_dir)

    def kill_after_epoch(state):
        if state.row["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        run_local(spec, Hooks(after_epoch=kill_after_epoch))
    assert stable_rows(spec.run_dir) == expected[:1]
    assert metrics.read_status(spec.run_dir)["state"] == "failed"

    # Update 4 wrote a step checkpoint at batch 2 of epoch 2; die one update later, mid-epoch.
    def kill_mid_epoch(state):
        if state.num_updates == 5:
            raise Killed

    with pytest.raises(Killed):
        run_local(spec, Hooks(after_step=kill_mid_epoch))
    latest = ckpt.latest_valid(spec.run_dir / CHECKPOINT_DIR)
    assert ckpt.read_manifest(latest)["batch"] == 2 and ckpt.read_manifest(latest)["epoch"] == 1

    # A stop request (SIGTERM, handled as `python -m jobs train` installs it) after update 5, mid-epoch 2: the
    # ranks agree at the epoch's last update (6), write a checkpoint there and record the run as preempted.
    stop_ctx = LocalContext(spec.run_dir, use_gpu=False)

    def signal_after_update_5(state):
        if state.num_updates == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    with stop_ctx, stop_ctx.stop.installed(signal.SIGTERM), pytest.raises(Preempted):
        train_loop(spec, stop_ctx, Hooks(after_step=signal_after_update_5))
    latest = ckpt.latest_valid(spec.run_dir / CHECKPOINT_DIR)
    assert {k: ckpt.read_manifest(latest)[k] for k in ("epoch", "batch", "num_updates")} == \
        {"epoch": 1, "batch": 5, "num_updates": 6}  # the epoch's last micro-batch
    status = metrics.read_status(spec.run_dir)
    assert (status["state"], status["update"], status["epoch"]) == ("preempted", 6, 1)
    assert [r["resumed_from"] for r in rows(spec.run_dir)] == [None]  # epoch 2's row comes after the resume

    run_local(spec)
    table = rows(spec.run_dir)
    assert stable_rows(table) == expected
    assert [r["resumed_from"] for r in table] == [None, 1, 1]

    # A torn latest checkpoint: skipped with a warning, the previous (mid-epoch 3) one is used, and
    # the recomputed last epoch is again bitwise equal, its row replaced rather than duplicated.
    newest = ckpt.numbered(spec.run_dir / CHECKPOINT_DIR)[0]
    (newest / "model.pt").write_bytes((newest / "model.pt").read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="corrupt"):
        run_local(spec)
    table = rows(spec.run_dir)
    assert stable_rows(table) == expected
    assert [r["resumed_from"] for r in table] == [None, 1, 2]
    events = (spec.run_dir / EVENTS_FILE).read_text()
    assert "moved to corrupt-" in events and events.count("resume:") == 4


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(demo_data, tmp_path):
    spec = tiny_spec(demo_data, tmp_path, *RECIPE, "train.epochs=1", "train.grad_accum=1",
                     "checkpoint.every_steps=1", "train.ema=false")

    def poison(state):
        if state.num_updates == 1:  # after the step-1 checkpoint: the next forward pass gives NaN
            with torch.no_grad():
                state.model.head.weight.fill_(math.nan)

    with pytest.raises(NonFiniteLossError, match="non-finite training loss at epoch 1 batch 2"):
        run_local(spec, Hooks(after_step=poison))
    latest = ckpt.latest_valid(spec.run_dir / CHECKPOINT_DIR)
    assert ckpt.read_manifest(latest)["num_updates"] == 1
    assert torch.isfinite(ckpt.unpack_state(ckpt.load_file(latest, "model.pt"))["head.weight"]).all()
    status = metrics.read_status(spec.run_dir)
    assert status["state"] == "failed" and "non-finite" in status["error"]
    assert rows(spec.run_dir) == []


def test_dataset_class_count_must_match(demo_data, tmp_path):
    spec = tiny_spec(demo_data, tmp_path, *RECIPE)
    bad = spec.model_copy(update={"model": spec.model.model_copy(update={"num_classes": 12})})
    from jobs.spec import SpecError

    with pytest.raises(SpecError, match="has 10 classes but the model has num_classes=12"):
        run_local(bad)


def test_skip_nonfinite_skips_updates_instead_of_stopping(demo_data, tmp_path):
    spec = tiny_spec(demo_data, tmp_path, *RECIPE, "train.epochs=1", "train.grad_accum=1", "train.ema=false",
                     "train.skip_nonfinite=true")

    def poison(state):
        if state.num_updates == 4:
            with torch.no_grad():
                state.model.head.bias.fill_(math.inf)

    run_local(spec, Hooks(after_step=poison))
    events = (spec.run_dir / EVENTS_FILE).read_text()
    assert events.count("non-finite loss") == 1  # update 5 of 5 skipped
    assert "skipped update 5" in events
    assert metrics.read_status(spec.run_dir)["state"] == "finished"
    assert math.isfinite(rows(spec.run_dir)[0]["train_loss"])  # skipped batches are left out of the mean
