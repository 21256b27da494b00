"""Run logging on its own (real timm ViT, real optimizer, real backward): what TensorBoard, W&B (offline)
and MLflow (file store) hold afterwards, read back with their own readers; a resume that rewinds continues
the same curves without duplicated steps; per-block layer statistics with a shared MLP; config errors."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from jobs.models import build_model
from jobs.run_logger import RunLogger, mlflow_tracking_uri, wandb_run_id
from jobs.spec import RunSpec, SpecError, validate_spec
from jobs.strategies import StrategySpec
from rundir.names import LAYER_STATS_FILE

STEPS_PER_EPOCH = 10


def make_spec(out: Path, **logging) -> RunSpec:
    return RunSpec.model_validate({
        "model": {"name": "vit_tiny_patch16_224", "num_classes": 10, "img_size": 32, "patch_size": 8, "depth": 2,
                  "embed_dim": 32, "num_heads": 2},
        "data": {"train_path": "train.beton", "val_path": "val.beton", "img_size": 32},
        "train": {"epochs": 3}, "output_root": str(out), "study": "s", "run_id": "r0",
        "logging": {"tensorboard": True, "every_steps": 5, "progress_bar": False, **logging},
    })


def train_steps(spec: RunSpec, first: int, last: int, *, loss_offset: float = 0.0, grouped: bool = False) -> None:
    """Optimizer updates first..last (1-based global count) of a tiny real ViT, logged as the loop does."""
    torch.manual_seed(0)
    strategies = [StrategySpec(name="grouped", params={"group_size": 2})] if grouped else []
    model = build_model(spec.model.name, strategies, **spec.create_kwargs())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    log = RunLogger(spec, spec.run_dir, rank=0, world_size=1, start_step=first - 1, steps_per_epoch=STEPS_PER_EPOCH)
    log.attach(model)
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(first, last + 1)]
    for step, (x, y) in zip(range(first, last + 1), log.timed(batches)):
        loss = torch.nn.functional.cross_entropy(model(x), y) + loss_offset
        loss.backward()
        log.micro_batch(loss, len(y))
        log.before_step(step, model)
        opt.step()
        opt.zero_grad(set_to_none=True)
        log.after_step(step, (step - 1) // STEPS_PER_EPOCH, lr=1e-3)
        if step % STEPS_PER_EPOCH == 0:
            log.epoch_end(step, {"train_loss": 2.0 + loss_offset, "top1": 10.0 * step, "ema_top1": None})
    log.close()


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_every_n_steps_and_resume_without_duplicates(tmp_path):
    spec = make_spec(tmp_path)
    train_steps(spec, 1, 25)
    first = tensorboard_scalars(spec.run_dir)
    assert {"train/loss", "train/lr", "train/grad_norm", "train/img_s", "train/data_wait",
            "epoch/train_loss", "epoch/top1"} <= set(first)
    assert [s for s, _ in first["train/loss"]] == [5, 10, 15, 20, 25]
    assert [s for s, _ in first["epoch/top1"]] == [10, 20]
    assert all(v > 0 for _, v in first["train/grad_norm"]) and all(0 <= v <= 1 for _, v in first["train/data_wait"])
    # The attempt died after update 25; its checkpoint was at update 10: updates 11.. run again.
    train_steps(spec, 11, 30, loss_offset=100.0)
    after = tensorboard_scalars(spec.run_dir)
    loss = dict(after["train/loss"])
    assert [s for s, _ in after["train/loss"]] == [5, 10, 15, 20, 25, 30]       # no step twice, none rewound
    assert loss[5] == pytest.approx(dict(first["train/loss"])[5]) and loss[10] < 50   # before the checkpoint: kept
    assert all(loss[s] > 50 for s in (15, 20, 25, 30))                              # after it: the new attempt's
    assert [s for s, v in after["epoch/train_loss"]] == [10, 20, 30]
    assert dict(after["epoch/train_loss"])[20] > 50


def test_layer_stats_shared_mlp_recorded_once(tmp_path):
    spec = make_spec(tmp_path, layer_stats=True)
    train_steps(spec, 1, 10, grouped=True)
    table = pq.read_table(spec.run_dir / LAYER_STATS_FILE).to_pylist()
    assert sorted({r["step"] for r in table}) == [5, 10]
    at5 = [r for r in table if r["step"] == 5]
    # 2 blocks: two attentions of their own, one MLP shared by both blocks.
    assert sorted((r["part"], r["block"], r["blocks"], r["shared"]) for r in at5) == [
        ("attn", 0, "0", False), ("attn", 1, "1", False), ("mlp", 0, "0,1", True)]
    assert all(r["grad_norm"] > 0 and 0 < r["update_ratio"] < 1 and r["weight_norm"] > 0 for r in table)
    assert {r["epoch"] for r in table} == {1}
    # A resume from update 5 drops the rows written after it and appends the new attempt's.
    train_steps(spec, 6, 15, grouped=True)
    steps = [r["step"] for r in pq.read_table(spec.run_dir / LAYER_STATS_FILE).to_pylist()]
    assert sorted(set(steps)) == [5, 10, 15] and steps.count(10) == 3


def test_layer_stats_grad_norm_matches_parameters(tmp_path):
    """The recorded MLP gradient norm is the l2 norm over fc1/fc2 weights and biases of that block."""
    from jobs.layer_stats import LayerStats

    spec = make_spec(tmp_path, layer_stats=True)
    torch.manual_seed(0)
    model = build_model(spec.model.name, [], **spec.create_kwargs())
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    expect = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.blocks[1].mlp.parameters()]))
    stats = LayerStats(model, tmp_path, spec)
    stats.before_step()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)  # a known update: ratio 0.5
    stats.after_step(7, 0)
    row = next(r for r in stats.rows if r["block"] == 1 and r["part"] == "mlp")
    assert row["grad_norm"] == pytest.approx(float(expect), rel=1e-5)
    assert row["update_ratio"] == pytest.approx(0.5, rel=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb extra not installed")
def test_wandb_offline_continues_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    spec = make_spec(tmp_path, tensorboard=False, wandb={"project": "vitreduce-test", "mode": "offline"})
    train_steps(spec, 1, 10)
    train_steps(spec, 6, 15)
    runs = sorted((spec.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(p.name.endswith(wandb_run_id(spec)) for p in runs)
    wandb_cli = Path(sys.executable).with_name("wandb")
    history = []
    for run in runs:
        out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(run)], capture_output=True,
                             text=True, check=True, timeout=120).stdout
        records = [json.loads(line) for line in out.splitlines() if line.strip()]
        history.append([(r["history"]["step"]["num"], r["history"]["item"]) for r in records if r["type"] == "history"])
        assert any(r["type"] == "run" and r["run"]["run_id"] == wandb_run_id(spec) for r in records)
    assert [s for s, item in history[0] if "train/loss" in item] == [5, 10]
    assert [s for s, item in history[1] if "train/loss" in item] == [10, 15]
    assert all({"train/lr", "train/grad_norm", "train/img_s"} <= set(item) for _, item in history[0] if "train/loss" in item)


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow extra not installed")
def test_mlflow_file_store_in_study_dir_and_resume(tmp_path):
    from mlflow.tracking import MlflowClient

    spec = make_spec(tmp_path, tensorboard=False, mlflow={})
    train_steps(spec, 1, 20)
    train_steps(spec, 11, 30, loss_offset=100.0)  # resumed from update 10
    uri = mlflow_tracking_uri(spec)
    assert Path(uri.removeprefix("file://")) == (tmp_path / "s" / "mlruns").resolve()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("s")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "r0" and runs[0].info.status == "FINISHED"
    loss = client.get_metric_history(runs[0].info.run_id, "train.loss")
    assert sorted(m.step for m in loss) == [5, 10, 15, 20, 25, 30]   # 15 and 20 not logged twice
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "epoch.top1")] == [10, 20, 30]


def test_missing_extra_is_one_line_at_validation(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(SpecError) as err:
        validate_spec({"data": {"train_path": "/nonexistent/t.beton", "val_path": "/nonexistent/v.beton"},
                       "logging": {"wandb": {"project": "p"}}})
    lines = [e for e in err.value.errors if e.startswith("logging")]
    assert lines == ["logging: logging.wandb is set but the wandb package is not installed; "
                     "pip install -e '.[wandb]' or remove logging.wandb"]


def test_logging_block_defaults_and_unknown_key():
    spec = RunSpec.model_validate({"data": {"train_path": "t.beton", "val_path": "v.beton"}})
    assert spec.logging.tensorboard and spec.logging.every_steps == 10 and not spec.logging.layer_stats
    with pytest.raises(SpecError) as err:
        validate_spec({"data": {"train_path": "/x/t.beton", "val_path": "/x/v.beton"}, "logging": {"every_step": 5}})
    assert any("logging.every_step: unknown key; did you mean 'logging.every_steps'?" in e for e in err.value.errors)


def test_tensorboard_off_writes_no_event_files(tmp_path):
    spec = make_spec(tmp_path, tensorboard=False)
    train_steps(spec, 1, 5)
    assert not list(spec.run_dir.glob("events.out.tfevents*"))
    shutil.rmtree(spec.run_dir)


def test_stability_table_and_figure_by_condition(tmp_path):
    """Two conditions with real layer stats: the CV table matches a direct computation; analysis needs no torch."""
    from analysis import layer_stats

    for condition, grouped in (("baseline", False), ("grouped", True)):
        spec = make_spec(tmp_path, layer_stats=True, every_steps=1).model_copy(
            update={"run_id": f"{condition}-s0", "condition": condition})
        train_steps(spec, 1, 8, grouped=grouped)
        spec.record(spec.run_dir)  # what makes a folder a run folder
    text, files = layer_stats.report_section(tmp_path / "s", tmp_path)
    assert files["layer_stats_figure"].stat().st_size > 10_000
    assert layer_stats.TITLE in text and "| grouped | mlp |" in text
    table = pd.read_csv(files["layer_stats_table"])
    df = layer_stats.load(tmp_path / "s")
    for _, row in table.iterrows():
        rows = df[(df["condition"] == row["condition"]) & (df["part"] == row["part"])]
        cvs = [np.std(g["grad_norm"], ddof=1) / np.mean(g["grad_norm"]) for _, g in rows.groupby("block")]
        assert row["cv_mean"] == pytest.approx(np.mean(cvs)) and row["cv_max"] == pytest.approx(max(cvs))
    assert table.set_index(["condition", "part"]).loc[("grouped", "mlp"), "shared"]
    assert len(df[(df["condition"] == "grouped") & (df["part"] == "mlp") & (df["step"] == 1)]) == 1
    probe = "import sys, analysis.layer_stats, analysis.report; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
