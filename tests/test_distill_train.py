"""Distillation end to end on the shipped digits (CPU): a baseline stage, a pruned student started from
its best export and taught by it with exact resume, a refused teacher change, and label-free recovery
that never reads a label."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import rundir as metrics
from data.convert import convert
from data.demo import DEMO_OPTIONS
from data.labels import label_map_path, read_label_map
from jobs import checkpoint_files as ckpt
from jobs.loop_state import Hooks
from jobs.spec import SpecError
from rundir import CHECKPOINT_DIR
from tests.tiny import VOLATILE, run_local, stable_rows, tiny_spec

PRUNE = "strategies=[{name: shallow, params: {keep_ratio: 0.5, select: diversity}}]"


class Killed(Exception):
    pass


def spec_for(demo_data, study: Path, run_id: str, condition: str, *extra: str):
    return tiny_spec(
        demo_data, study.parent, f"study={study.name}", f"condition={condition}", "train.epochs=2",
        "train.batch_size=256", "train.grad_accum=1", "train.lr=5e-3", "train.warmup_epochs=1", "train.mixup=0.8",
        "train.cutmix=1.0", "train.ema_decay=0.9", "checkpoint.every_steps=2", *extra, run_id=run_id,
    )


def stable(run_dir: Path) -> list[dict]:
    """The metrics rows that must match between two runs; here the compared runs have other run_ids."""
    return stable_rows(run_dir, VOLATILE | {"run_id"})


@pytest.fixture(scope="module")
def study(demo_data, tmp_path_factory):
    """Stage 1: the baseline (the teacher and the starting point of the later stage)."""
    study = tmp_path_factory.mktemp("studies") / "distill"
    run_local(spec_for(demo_data, study, "baseline-s0", "baseline", "train.epochs=3"))
    return study


def soft_student(demo_data, study, run_id, *extra):
    return spec_for(demo_data, study, run_id, "pruned", "model.init=run:baseline", PRUNE,
                    "distill={teacher: run:baseline, loss: soft, alpha: 0.5, tau: 2.0}", *extra)


def test_pruned_student_taught_by_its_stage_resumes_exactly(study, demo_data, tmp_path):
    teacher_file = study / "baseline-s0" / CHECKPOINT_DIR / "best" / "model.pt"
    reference = soft_student(demo_data, study, "ref-s0")
    run_local(reference)
    expected = stable(reference.run_dir)
    assert [r["epoch"] for r in expected] == [1, 2] and expected[0]["mlp_hidden"] == 64
    latest = ckpt.latest_valid(reference.run_dir / CHECKPOINT_DIR)
    manifest = ckpt.read_manifest(latest)
    assert manifest["teacher"]["path"] == str(teacher_file)
    assert manifest["teacher"]["sha256"] == ckpt.read_manifest(teacher_file.parent)["files"]["model.pt"]["sha256"]
    assert not any("teacher" in f for f in manifest["files"])  # its identity, never its weights
    packed = ckpt.load_file(latest, "model.pt")
    assert packed["tensors"]["blocks.0.mlp.fc1.weight"].shape == (64, 32)

    spec = soft_student(demo_data, study, "killed-s0")

    def kill_mid_epoch(state):
        if state.num_updates == 8:  # 6 updates per epoch: epoch 2, after the step checkpoint at update 8
            raise Killed

    with pytest.raises(Killed):
        run_local(spec, Hooks(after_step=kill_mid_epoch))
    before = {p: p.read_bytes() for p in spec.run_dir.rglob("*") if p.is_file()}

    # Another teacher (same architecture, other weights) is refused before anything is touched.
    other = tmp_path / "other_teacher.pth"
    state = torch.load(teacher_file, weights_only=True)
    torch.save({k: v + 0.01 for k, v in state.items()}, other)
    changed = soft_student(demo_data, study, "killed-s0", f"distill.teacher={other}")
    with pytest.raises(SpecError) as info:
        run_local(changed)
    (line,) = info.value.errors
    assert line.startswith("distill.teacher: the run was trained with teacher run:baseline") and "another run_id" in line
    assert {p: p.read_bytes() for p in spec.run_dir.rglob("*") if p.is_file()} == before

    run_local(spec)
    assert stable(spec.run_dir) == expected


def _permuted_train_beton(demo_data, out: Path) -> Path:
    """The training images in the same order with wrong labels (class i -> 9 - i), same class map."""
    mapping = read_label_map(demo_data.train_beton)
    wrong = {name: len(mapping) - 1 - index for name, index in mapping.items()}
    target = out / "train_wrong.beton"
    convert(demo_data.train_dir, target, DEMO_OPTIONS, label_map=wrong, log=lambda *_: None)
    label_map_path(target).write_text(json.dumps(mapping))
    return target


def test_label_free_recovery_never_reads_labels(study, demo_data, tmp_path):
    wrong = _permuted_train_beton(demo_data, tmp_path)
    label_free = ("model.init=run:baseline", PRUNE, "train.mixup=0.0", "train.cutmix=0.0",
                  "distill={teacher: self, loss: feature_mse, alpha: 1.0, labels: false}")
    right_spec = spec_for(demo_data, study, "free-s0", "free", *label_free)
    wrong_spec = spec_for(demo_data, study, "free-wrong-s0", "free", *label_free, f"data.train_path={wrong}")
    run_local(right_spec)
    run_local(wrong_spec)
    right, wrong_rows = stable(right_spec.run_dir), stable(wrong_spec.run_dir)
    assert right == wrong_rows
    assert right[1]["train_loss"] < right[0]["train_loss"]  # the pruned model moves toward its teacher
    # the same pair with labels read (alpha 0.5) differs: the wrong labels do reach a labelled run
    with_labels = ("model.init=run:baseline", PRUNE, "train.mixup=0.0", "train.cutmix=0.0", "train.epochs=1",
                   "distill={teacher: self, loss: feature_mse, alpha: 0.5}")
    a = spec_for(demo_data, study, "lab-s0", "lab", *with_labels)
    b = spec_for(demo_data, study, "lab-wrong-s0", "lab", *with_labels, f"data.train_path={wrong}")
    run_local(a)
    run_local(b)
    assert stable(a.run_dir)[0]["train_loss"] != stable(b.run_dir)[0]["train_loss"]


def test_a_run_whose_stage_is_not_finished_fails_with_one_line(study, demo_data):
    spec = spec_for(demo_data, study, "early-s1", "early", "seed=1", "model.init=run:baseline")
    with pytest.raises(SpecError) as info:
        run_local(spec)
    (line,) = info.value.errors
    assert line.startswith("model.init: run:baseline (seed 1, grid {}) has not started")
    assert metrics.read_status(spec.run_dir)["state"] == "failed"
    shutil.rmtree(spec.run_dir)
