"""The shipped DGMR and DeiT-distillation studies validate on a machine without ImageNet (the CLI's
validation-only path, `--print-config`, pointed at the shipped digits) and state the recipes they claim."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import timm
import torch
import yaml
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg

from rundir import node_from_spec, stage_lines

REPO = Path(__file__).resolve().parents[1]
VIT_B = "vit_base_patch16_224"
TEACHER = "regnety_160.deit_in1k"


def print_config(config: str, demo_data, *extra: str, env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", config,
                           f"data.train_path={demo_data.train_beton}", f"data.val_path={demo_data.val_beton}",
                           "model.num_classes=10", *extra, "--print-config"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return yaml.safe_load(proc.stdout)


def offline_hf_cache(root: Path, model: str = VIT_B, **kwargs) -> Path:
    """A Hugging Face hub cache holding `model`'s weights in timm's layout (uninitialised values: validation reads only
    the safetensors header, never the weights)."""
    repo = root / f"models--{get_pretrained_cfg(model).hf_hub_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    with torch.device("meta"):  # shapes only: no initialisation of 86M values
        shapes = timm.create_model(model, **kwargs).state_dict()
    save_file({k: torch.empty(v.shape, dtype=v.dtype) for k, v in shapes.items()},
              repo / "snapshots" / commit / "model.safetensors")
    return root


def test_dgmr_study_validates_and_states_the_recipe(demo_data, tmp_path):
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(offline_hf_cache(tmp_path / "hub")),
           "PYTHONPATH": str(REPO)}
    study = print_config("configs/dgmr/study.yaml", demo_data, env=env)
    runs = study["runs"]
    by = {(r["condition"], r["ablation"].get("strategy.shallow.keep_ratio")): r for r in runs}
    assert sorted(by) == sorted([("pretrained", None)] + [(c, k) for c in ("pruned", "pruned_first") for k in (0.5, 0.25)]
                                + [("recovered", 0.25), ("recovered_long", 0.5), ("recovered_first", 0.25),
                                   ("recovered_first_long", 0.5)])
    rec = by[("recovered", 0.25)]
    assert rec["model"]["init"] == "pretrained" and rec["model"]["name"] == VIT_B
    assert rec["strategies"] == [{"name": "shallow", "params": {"keep_ratio": 0.25, "select": "diversity"}}]
    assert by[("recovered_first_long", 0.5)]["strategies"][0]["params"]["select"] == "first"
    d = rec["distill"]
    assert (d["teacher"]["init"], d["loss"], d["alpha"], d["labels"]) == ("self", "feature_mse", 1.0, False)
    assert (d["feature"]["cls_weight"], d["feature"]["patch_weight"]) == (1.0, 1.0)
    t = rec["train"]
    assert t["epochs"] == 10 and by[("recovered_long", 0.5)]["train"]["epochs"] == 20
    assert t["opt"] == "adamw" and t["opt_kwargs"]["betas"] == [0.9, 0.95]
    assert (t["lr"], t["lr_base_batch"], t["lr_scale"]) == (6e-5, 256, "linear")
    assert (t["sched"], t["min_lr"], t["warmup_epochs"], t["warmup_prefix"], t["sched_on_updates"]) == (
        "cosine", 1e-6, 2, True, True)
    assert (t["weight_decay"], t["weight_decay_end"], t["wd_skip_norm_bias"]) == (0.04, 0.2, False)
    assert {r["train"]["epochs"] for r in runs if r["condition"] in ("pretrained", "pruned", "pruned_first")} == {0}
    # the numbers against the upstream formulas: tests/test_recipes.py


def test_deit_distill_study_validates_with_a_regnety_teacher(demo_data, tmp_path):
    """DeiT's teacher, RegNetY-16GF with DeiT's weights (timm regnety_160.deit_in1k), read from the hub cache."""
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "HF_HUB_CACHE": str(offline_hf_cache(tmp_path / "hub", TEACHER, num_classes=10))}
    study = print_config("configs/deit_distill/study.yaml", demo_data, env=env)
    runs = {r["condition"]: r for r in study["runs"]}
    d = runs["distilled"]["distill"]
    assert runs["distilled"]["model"]["name"] == "deit_small_distilled_patch16_224"
    assert (d["teacher"]["init"], d["teacher"]["model"], d["loss"], d["alpha"]) == ("pretrained", TEACHER, "hard", 0.5)
    assert runs["student"].get("distill") is None
    nodes = [node_from_spec(r["run_id"], r) for r in study["runs"]]
    assert stage_lines(nodes) == ["stage 0: distilled", "stage 0: student"]
