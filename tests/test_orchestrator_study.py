"""Studies without Ray: loading, every error kind at once, overrides, expansion, cluster fit, lock."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.spec import SpecError
from jobs.study import load_study
from orchestrator.lock import StudyLocked, study_lock
from orchestrator.resources import ClusterShape, check_fits, fits_on
from rundir import LOCK_FILE

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"name": "vit_tiny_patch16_224", "num_classes": 10, "patch_size": 4, "depth": 4, "embed_dim": 48, "num_heads": 3}


def write_study(tmp_path: Path, demo_data, **study) -> Path:
    body = {
        "study": "s",
        "output_root": str(tmp_path / "runs"),
        "model": TINY_MODEL,
        "data": {"train_path": str(demo_data.train_beton), "val_path": str(demo_data.val_beton), "img_size": 32},
        "resources": {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 1, "gpus_per_worker": 0},
        "seeds": [0, 1],
        "conditions": {
            "baseline": {},
            "grouped": {"strategies": [{"name": "grouped", "params": {"group_size": 2}}]},
            "shallow": {"strategies": [{"name": "shallow", "params": {"keep_ratio": 0.5}}]},
        },
    }
    body.update(study)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def errors_of(path: Path, overrides=(), **kw) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_study(path, list(overrides), **kw)
    return info.value.errors


def test_expansion_ids_conditions_and_ablation(tmp_path, demo_data):
    path = write_study(tmp_path, demo_data, grid={"strategy.shallow.keep_ratio": [0.25, 0.5], "train.lr": [0.001]})
    study = load_study(path)
    ids = [r.run_id for r in study.runs]
    assert ids == [
        "baseline-lr=0.001-s0", "baseline-lr=0.001-s1",
        "grouped-lr=0.001-s0", "grouped-lr=0.001-s1",
        "shallow-keep_ratio=0.25-lr=0.001-s0", "shallow-keep_ratio=0.25-lr=0.001-s1",
        "shallow-keep_ratio=0.5-lr=0.001-s0", "shallow-keep_ratio=0.5-lr=0.001-s1",
    ]
    assert ids == [r.run_id for r in load_study(path).runs]  # deterministic
    by_id = {r.run_id: r for r in study.runs}
    r = by_id["shallow-keep_ratio=0.25-lr=0.001-s1"]
    assert r.seed == 1 and r.condition == "shallow" and r.train.lr == 0.001
    assert r.ablation == {"strategy.shallow.keep_ratio": 0.25, "train.lr": 0.001}
    assert r.strategies[0].params.keep_ratio == 0.25
    # the strategy axis does not multiply conditions that do not use the strategy
    assert by_id["grouped-lr=0.001-s0"].ablation == {"train.lr": 0.001}
    assert study.study_dir == tmp_path / "runs" / "s"
    assert {r.run_dir.parent for r in study.runs} == {study.study_dir}


def test_model_axis_and_condition_overrides(tmp_path, demo_data):
    path = write_study(tmp_path, demo_data, seeds=[3], grid={"model": ["vit_tiny_patch16_224", "vit_small_patch16_224"]},
                       conditions={"thin": {"strategies": [{"name": "thin", "params": {"mlp_ratio": 2.0}}],
                                            "overrides": {"train.epochs": 7}}})
    runs = load_study(path).runs
    assert [r.run_id for r in runs] == ["thin-model=vit_tiny_patch16_224-s3", "thin-model=vit_small_patch16_224-s3"]
    assert [r.model.name for r in runs] == ["vit_tiny_patch16_224", "vit_small_patch16_224"]
    assert all(r.train.epochs == 7 for r in runs)


def test_overrides_typed_for_run_and_study_fields(tmp_path, demo_data):
    path = write_study(tmp_path, demo_data)
    study = load_study(path, ["train.epochs=3", "seeds=[5]", "grid.train.lr=[1e-3,2e-3]",
                              "conditions.grouped.overrides.train.warmup_epochs=0", "sweep.max_failures=4"])
    assert {r.train.epochs for r in study.runs} == {3}
    assert {r.seed for r in study.runs} == {5}
    assert sorted({r.train.lr for r in study.runs}) == [0.001, 0.002]
    assert {r.train.warmup_epochs for r in study.runs if r.condition == "grouped"} == {0}
    assert {r.train.warmup_epochs for r in study.runs if r.condition != "grouped"} == {5}
    assert study.sweep.max_failures == 4


def test_every_error_at_once_one_line_each(tmp_path, demo_data):
    path = write_study(
        tmp_path, demo_data,
        grid={"train.lrr": [0.1], "model.depth": [], "strategy.shalow.keep_ratio": [0.5]},
        conditions={"baseline": {}, "bad": {"strategies": [{"name": "grouped", "params": {"group_size": 3}}]}},
        sweep={"max_concurrent_trials": 0},
    )
    errors = errors_of(path, ["resources.num_workerz=2", "train.epochs=-1", "oops"],
                       judge=fits_on(ClusterShape(cpus=2, node_cpus=2)))
    text = "\n".join(errors)
    assert all("\n" not in e for e in errors)
    assert "sweep.max_concurrent_trials" in text                     # study field range
    assert "unknown axis 'train.lrr'" in text and "did you mean 'train.lr'" in text
    assert "axis 'model.depth' has no values" in text                # empty grid axis
    assert "no condition uses strategy 'shalow'" in text
    assert "resources.num_workerz" in text and "did you mean 'resources.num_workers'" in text
    assert "train.epochs" in text                                    # out of range, typed by the run schema
    assert "'oops'" in text                                          # malformed override
    assert "not divisible by group_size 3" in text                   # strategy vs model depth
    assert any(e.startswith("all 4 runs:") for e in errors)          # one line for the same error in every run


def test_missing_data_and_cluster_too_small(tmp_path, demo_data):
    path = write_study(tmp_path, demo_data, resources={"num_workers": 4, "use_gpu": True, "cpus_per_worker": 3,
                                                       "gpus_per_worker": 1})
    errors = errors_of(path, ["data.train_path=/nonexistent/train.beton"], judge=fits_on(ClusterShape(cpus=8, node_cpus=2)))
    text = "\n".join(errors)
    assert "/nonexistent/train.beton does not exist" in text
    assert "cpus_per_worker=3 but the largest node has 2 CPUs" in text
    assert "gpus_per_worker=1 but the largest node has 0 GPUs" in text
    assert "4 workers x 3 CPUs = 12 > 8 CPUs" in text
    # Without a cluster (Slurm path) resources are not judged; with a big one they fit.
    load_study(path, ["resources.use_gpu=false"], judge=fits_on(ClusterShape(cpus=16, node_cpus=4)))


def test_check_fits_counts_gpus_per_cluster(tmp_path, demo_data):
    path = write_study(tmp_path, demo_data, resources={"num_workers": 4, "use_gpu": True, "cpus_per_worker": 1,
                                                       "gpus_per_worker": 1})
    runs = load_study(path).runs
    assert check_fits(runs, ClusterShape(cpus=64, gpus=8, node_cpus=32, node_gpus=4)) == []
    (err,) = check_fits(runs, ClusterShape(cpus=64, gpus=2, node_cpus=32, node_gpus=2))
    assert "4 workers x 1 GPUs > 2 GPUs" in err


def test_shipped_study_configs_validate(demo_data):
    demo = load_study(REPO / "configs/demo_study.yaml", [f"data_root={demo_data.root}"],
                      judge=fits_on(ClusterShape(cpus=2, node_cpus=2)))
    base = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    assert len(demo.runs) == 14 and {r.model.depth for r in demo.runs} == {base["model"]["depth"]}
    assert "multiplexed" in {r.condition for r in demo.runs}
    paper = load_study(REPO / "configs/paper/study.yaml",
                       [f"data.train_path={demo_data.train_beton}", f"data.val_path={demo_data.val_beton}",
                        "model.num_classes=10"])
    assert sorted({r.condition for r in paper.runs}) == ["baseline", "grouped", "shallow", "thin"]
    assert {r.seed for r in paper.runs} == {42, 43} and len(paper.runs) == 8
    assert {r.train.epochs for r in paper.runs} == {300} and {r.model.name for r in paper.runs} == {"vit_base_patch16_224"}


def test_cli_reports_errors_before_ray(tmp_path, demo_data):
    path = write_study(tmp_path, demo_data, grid={"train.lrr": [0.1]})
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(path), "resources.cpus_per_worker=999"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "unknown axis 'train.lrr'" in proc.stderr and "cpus_per_worker=999" in proc.stderr
    assert "ray" not in proc.stdout.lower()  # nothing started
    assert not (tmp_path / "runs").exists()


def test_study_lock_refuses_second_holder_and_takes_over_stale(tmp_path):
    with study_lock(tmp_path / "st") as lock:
        owner = json.loads(lock.read_text())
        assert owner["pid"] == os.getpid() and owner["host"]
        with pytest.raises(StudyLocked, match=f"in use by pid {os.getpid()}"):
            with study_lock(tmp_path / "st"):
                pass
        # another process is refused too
        code = ("import sys; from orchestrator.lock import study_lock, StudyLocked\n"
                "try:\n  study_lock(sys.argv[1]).__enter__()\nexcept StudyLocked as e:\n  print(e); sys.exit(3)\n")
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "st")], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 3 and "in use by pid" in proc.stdout
    assert not (tmp_path / "st" / LOCK_FILE).exists()
    # a lock left by a dead process on this host is stale
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "st" / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "start": "1"}))
    with pytest.warns(UserWarning, match="stale lock"):
        with study_lock(tmp_path / "st"):
            pass
