"""Run spec: YAML + typed overrides, every error at once on one line each, shipped configs valid."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs.spec import RunSpec, SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
PAPER = [ROOT / "configs" / "paper" / f"{name}.yaml" for name in ("baseline", "grouped", "shallow", "thin")]


def _errors(path, overrides) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    assert all("\n" not in e for e in info.value.errors)
    return info.value.errors


def test_demo_config_and_typed_overrides(demo_data, tmp_path):
    spec = load_spec(DEMO, [
        f"data_root={demo_data.root}", "train.epochs=3", "train.lr=1e-3", "train.amp=false",
        f"output_root={tmp_path}", "strategies=[{name: grouped, params: {group_size: 3}}]",
        "strategies.0.params.group_size=2", "ablation={keep: 0.25}",
    ])
    assert isinstance(spec, RunSpec)
    assert spec.train.epochs == 3 and spec.train.lr == 1e-3 and spec.train.amp is False
    assert spec.strategies[0].name == "grouped" and spec.strategies[0].params.group_size == 2
    # typed at validation (the strategy's own parameter class), written back as the mapping given
    assert type(spec.strategies[0].params).__name__ == "GroupedParams"
    assert yaml.safe_load(spec.to_yaml())["strategies"] == [{"name": "grouped", "params": {"group_size": 2}}]
    assert spec.data.train_path == demo_data.train_beton
    assert spec.run_dir == tmp_path / "demo" / "baseline-s0"
    assert spec.create_kwargs()["img_size"] == 32
    assert spec.strategy_label == "grouped" and spec.ablation == {"keep": 0.25}
    # the resolved spec round-trips through YAML
    out = tmp_path / "spec.yaml"
    out.write_text(spec.to_yaml())
    assert load_spec(out) == spec


def test_every_error_reported_at_once(demo_data):
    errors = _errors(DEMO, [
        f"data_root={demo_data.root}",
        "train.epoch=3",                                  # unknown key
        "trian.lr=1",                                     # unknown section
        "train.lr=fast",                                  # wrong type
        "train.warmup_epochs=-1",                         # out of range
        "checkpoint.keep_last=1",                         # below the minimum of 2
        "strategies=[{name: grouped, params: {group_size: 3}}]",  # depth 4 not divisible by 3
        "model.num_classes=7",                            # label map has 10 classes
        "data.val_path=missing.beton",                    # file does not exist
        "nonsense",                                       # not key=value
    ])
    text = "\n".join(errors)
    assert "train.epoch: unknown key; did you mean 'train.epochs'?" in errors
    assert "trian: unknown key; did you mean 'train'?" in errors
    assert any(e.startswith("train.lr:") and "'fast'" in e for e in errors)
    assert any(e.startswith("train.warmup_epochs:") for e in errors)
    assert any(e.startswith("checkpoint.keep_last:") for e in errors)
    assert "not divisible by group_size 3" in text
    assert "has 10 classes but the model has num_classes=7" in text
    assert "missing.beton does not exist" in text
    assert "'nonsense' is not key=value" in text
    assert len(errors) == 9


def test_model_errors_and_mixup_batch(demo_data):
    errors = _errors(DEMO, [f"data_root={demo_data.root}", "model.name=vit_tiny_patch16_2244",
                            "model.depht=2", "train.mixup=0.8", "train.batch_size=63",
                            "strategies=[{name: shallow, params: {keep_ratio: 1.5}}]"])
    text = "\n".join(errors)
    assert "model.depht: unknown key; did you mean 'model.depth'?" in errors
    assert "train.batch_size" in text or "batch_size 63 must be even" in text
    assert "keep_ratio" in text


def test_spec_errors_for_files(tmp_path):
    assert _errors(tmp_path / "nope.yaml", []) == [f"{tmp_path / 'nope.yaml'}: no such config file"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    assert "invalid YAML" in _errors(bad, [])[0]
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert _errors(empty, []) == ["data: required, but not given"]


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_configs_are_the_seed_runs(path, demo_data):
    spec = load_spec(path, [f"data_root={demo_data.root}", "model.num_classes=10"])
    t = spec.train
    assert spec.model.name == "vit_base_patch16_224" and spec.model.drop_path_rate == 0.1
    assert (t.epochs, t.batch_size, t.grad_accum, t.opt, t.lr, t.weight_decay) == (300, 256, 2, "adamw", 1e-3, 0.05)
    assert (t.sched, t.warmup_epochs, t.mixup, t.cutmix, t.smoothing) == ("cosine", 5, 0.8, 1.0, 0.1)
    assert (t.ema, t.ema_decay, t.amp, t.channels_last, spec.seed) == (True, 0.9998, True, True, 42)
    assert (spec.data.reprob, spec.data.auto_augment, spec.data.aug_repeats) == (0.25, "rand-m9-mstd0.5-inc1", 3)
    assert spec.resources.num_workers == 2
    assert t.scaled_lr(world_size=2) == pytest.approx(1e-3)  # the seed's global batch: lr unchanged
    # timm-exact switches, stated in the file: lr as given, cosine per epoch, float16 + GradScaler
    raw = yaml.safe_load(path.read_text())["train"]
    assert (raw["lr_scale"], raw["lr_base_batch"], raw["sched_on_updates"], raw["amp_dtype"]) == ("none", 1024, False, "float16")
    assert t.scaled_lr(world_size=8) == 1e-3  # as timm: a given --lr is used whatever the global batch
    expected = {"baseline": [], "grouped": ["grouped"], "shallow": ["shallow"], "thin": ["thin"]}[path.stem]
    assert [s.name for s in spec.strategies] == expected


def test_lr_scaling_rule(demo_data):
    spec = load_spec(PAPER[0], [f"data_root={demo_data.root}", "model.num_classes=10", "train.lr_scale=linear"])
    assert spec.train.scaled_lr(1) == pytest.approx(5e-4)  # half the seed's global batch
    assert spec.train.lr_rule(1) == ("lr 0.0005 = train.lr 0.001 x 512 / 1024 (lr_scale linear, lr_base_batch 1024; "
                                     "global batch 512 = 256 x 2 accum x 1 workers); schedule cosine stepped per epoch")
    sqrt = spec.train.model_copy(update={"lr_scale": "sqrt"})
    assert sqrt.scaled_lr(1) == pytest.approx(1e-3 * 0.5**0.5)
    assert spec.train.model_copy(update={"lr_scale": "none"}).scaled_lr(8) == 1e-3
    assert spec.train.model_copy(update={"lr_scale": "none"}).lr_rule(8).startswith("lr 0.001 = train.lr 0.001 as given")


def test_cli_rejects_a_bad_spec_before_training(capsys, demo_data):
    from jobs.train_cli import main

    assert main([str(DEMO), f"data_root={demo_data.root}", "train.epochs=-1", "model.deep=1"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs:" in err and "model.deep: unknown key" in err
