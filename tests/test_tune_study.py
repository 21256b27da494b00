"""Tuned studies (jobs.tune_space / tune_study, data.holdout): the tune block's validation, the held-out
slice, and one end-to-end sweep through the CLI: tuning -> confirm, with a driver kill in the middle of tuning and
`--resume` ending with the same winners as an undisturbed run of the same study.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from jobs.spec import SpecError
from jobs.study import load_study
from tests.test_ray_run import REPO, SMALL, cli, env, events, status, survivors
from tests.test_ray_run import pytestmark as needs_unshare

SPACE = {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}, "train.weight_decay": {"choice": [0.0, 0.05]}}


CONDITIONS = {"baseline": {}, "shallow": {"strategies": [{"name": "shallow", "params": {"keep_ratio": 0.5}}]}}


def tuned_study(tmp_path: Path, demo_data, name: str, conditions: dict = CONDITIONS, **tune) -> Path:
    study = {"base": str(REPO / "configs/demo.yaml"), "study": name, "output_root": str(tmp_path / "runs"),
             "data_root": str(demo_data.root), "seeds": [0], "conditions": conditions,
             "sweep": {"progress_every_s": 5},
             "tune": {"space": SPACE, "trials": 3, "seed": 1, "epochs": 2, "max_concurrent": 1,
                      "scheduler": {"grace_period": 1, "reduction_factor": 2}, "holdout": {"fraction": 0.2},
                      "confirm": {"epochs": 1}, **tune}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_bad_tune_blocks_are_refused_one_line_each(tmp_path, demo_data):
    path = tuned_study(tmp_path, demo_data, "bad", space={
        "train.lr": {"loguniform": [0.0, 1.0e-2]},       # log scale from 0
        "train.lrr": {"uniform": [0.1, 0.2]},             # not a run-spec field
        "train.weight_decay": {"normal": [0.0, 1.0]},     # not a distribution
        "train.warmup_epochs": {"choice": []},            # nothing to choose
        "train.epochs": {"uniform": [3, 1]}}, trials=2, metric="accuracy", sheduler={"name": "asha"})
    with pytest.raises(SpecError) as info:
        load_study(path)
    text = "\n".join(info.value.errors)
    for expected in ("sheduler", "needs low > 0", "unknown axis 'train.lrr'", "unknown distribution 'normal'",
                     "choice expects a non-empty list", "needs low < high"):
        assert expected in text, text
    ok = load_study(tuned_study(tmp_path, demo_data, "ok"))
    assert [r.run_id for r in ok.runs] == ["baseline-s0", "shallow-s0"] and ok.runs[0].train.epochs == 1


def test_every_distribution_is_a_tune_domain():
    """The block is checked in jobs (no Ray there) and sampled by the engine: both name the same distributions,
    and each becomes the Tune domain of its name."""
    from ray import tune

    from jobs.tune_space import DISTRIBUTIONS, TuneBlock
    from orchestrator.tune_domains import DOMAINS, param_space

    assert set(DOMAINS) == set(DISTRIBUTIONS)
    block = TuneBlock(trials=1, space={"train.lr": {"loguniform": [1e-4, 1e-2]}, "train.weight_decay": {"uniform": [0, 1]},
                                       "model.drop_path_rate": {"choice": [0.0, 0.1]}, "seed": {"grid": [1, 2]}})
    space = param_space(block)
    assert isinstance(space["train.lr"], tune.search.sample.Float) and space["train.lr"].lower == 1e-4
    assert isinstance(space["train.lr"].get_sampler(), tune.search.sample.LogUniform)
    assert isinstance(space["train.weight_decay"].get_sampler(), tune.search.sample.Uniform)
    assert space["model.drop_path_rate"].categories == [0.0, 0.1] and space["seed"] == {"grid_search": [1, 2]}


def test_holdout_is_class_balanced_deterministic_and_never_trained_on(demo_data):
    from data.config import DataConfig
    from data.holdout import HoldoutConfig, holdout_split, sample_labels
    from data.loaders import build_train_loader, build_val_loader

    holdout = HoldoutConfig(fraction=0.2, seed=3)
    labels = sample_labels(demo_data.train_beton, "ffcv")
    kept, held = holdout_split(demo_data.train_beton, "ffcv", holdout)
    assert np.array_equal(held, holdout_split(demo_data.train_beton, "ffcv", holdout)[1])
    assert not set(kept) & set(held) and len(kept) + len(held) == len(labels)
    per_class = np.bincount(labels[held]) / np.bincount(labels)
    assert np.all(np.abs(per_class - 0.2) < 0.02), per_class
    cfg = DataConfig(train_path=demo_data.train_beton, val_path=demo_data.val_beton, img_size=32, num_workers=1,
                     aug_repeats=1, ra_selected_round=0, holdout=holdout)
    assert not set(build_train_loader(cfg, batch_size=64, seed=0).source.order.fn(0)) & set(held)
    val = build_val_loader(cfg, batch_size=64)
    val.set_epoch(0)
    seen = np.sort(np.concatenate([y.numpy() for _, y in val]))
    assert np.array_equal(seen, np.sort(labels[held]))  # the slice of train, not val.beton


def _winners(study_dir: Path) -> dict:
    summary = json.loads((study_dir / "tuning" / "tuning.json").read_text())
    return {c: (s["best_trial"], s["best"], [(t["run_id"], t["status"], t["epochs_done"], t["params"])
                                            for t in s["trials"]]) for c, s in summary["conditions"].items()}


@pytest.mark.slow
@needs_unshare
def test_tuned_sweep_confirms_winners_and_resumes_after_a_driver_kill(tmp_path, demo_data):
    """Two copies of one tuned study (3 trials, ASHA, one trial at a time so the scheduler's decisions are
    deterministic) side by side: one undisturbed, one whose driver is SIGKILLed once its second trial has trained
    an epoch, then `sweep --resume`d. Both end with the same trials, stops and winners; the resumed one re-ran
    nothing that had finished; the confirm run trains the winner on val. One condition: choosing per condition
    is the tuned Slurm study's (test_slurm_stages.py) and test_analysis_tuning's to check."""
    one = {"baseline": CONDITIONS["baseline"]}
    plain, killed = tuned_study(tmp_path, demo_data, "plain", one), tuned_study(tmp_path, demo_data, "killed", one)
    options = [*SMALL, "--no-dashboard"]  # nothing here reads a dashboard; two at once would only cost start-up
    a = subprocess.Popen(cli("sweep", str(plain), *options), cwd=REPO, env=env(), stdout=(tmp_path / "a.log").open("w"),
                         stderr=subprocess.STDOUT)
    temp_dir = Path(f"/tmp/rt{id(a) % 100000}")
    study_dir = tmp_path / "runs" / "killed"
    b = subprocess.Popen(cli("sweep", str(killed), *options), cwd=REPO, env=env(RAY_TMPDIR=str(temp_dir)),
                         stdout=(tmp_path / "b.log").open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and b.poll() is None:
            if (study_dir / "tuning" / "baseline-t001" / "metrics.parquet").exists():
                break
            time.sleep(0.5)
    finally:
        b.send_signal(signal.SIGKILL)  # --kill-child: the driver's namespace (its Ray) dies with it
        b.wait(timeout=60)
    left = survivors(str(temp_dir))
    subprocess.run(["rm", "-rf", str(temp_dir)])
    assert not left and b.returncode == -signal.SIGKILL, (tmp_path / "b.log").read_text()[-3000:]
    done_before = {p.name: (p / "events.log").read_text() for p in (study_dir / "tuning").glob("*-t*")
                   if status(p).get("state") == "finished"}
    assert done_before and not (study_dir / "baseline-s0").exists()  # killed in the middle of tuning

    refused = subprocess.run(cli("sweep", str(killed), *options), cwd=REPO, env=env(), capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = subprocess.run(cli("sweep", str(killed), *options, "--resume"), cwd=REPO, env=env(),
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-3000:]
    assert a.wait(timeout=900) == 0, (tmp_path / "a.log").read_text()[-4000:]

    assert _winners(study_dir) == _winners(tmp_path / "runs" / "plain")
    for name, log in done_before.items():  # finished trials were kept, not trained again
        assert (study_dir / "tuning" / name / "events.log").read_text() == log
    summary = json.loads((study_dir / "tuning" / "tuning.json").read_text())
    for cond, s in summary["conditions"].items():
        assert len(s["trials"]) == 3
        for t in s["trials"]:
            assert t["status"] in ("finished", "stopped") and t["images"] == t["epochs_done"] * t["images_per_epoch"]
            assert (t["status"] == "stopped") == (t["epochs_done"] < t["epochs"])
            # the trial's own record agrees: a trial ASHA stopped is `stopped` at that epoch, never `failed`
            recorded = status(study_dir / "tuning" / t["run_id"])
            assert (recorded["state"], recorded["epoch"]) == (t["status"], t["epochs_done"]), (t, recorded)
            assert len(events(study_dir / "tuning" / t["run_id"], "start")) == 1  # never restarted from scratch
        confirm = yaml.safe_load((study_dir / f"{cond}-s0" / "spec.yaml").read_text())
        assert confirm["ablation"] == {"tuned": True, **s["best"]}
        assert confirm["data"]["holdout"] is None and confirm["train"]["lr"] == pytest.approx(s["best"]["train.lr"])
        assert status(study_dir / f"{cond}-s0")["state"] == "finished"
    assert any(t["status"] == "stopped" for s in summary["conditions"].values() for t in s["trials"]), summary
    trial = yaml.safe_load((study_dir / "tuning" / "baseline-t000" / "spec.yaml").read_text())
    assert trial["data"]["holdout"] == {"fraction": 0.2, "seed": 0} and trial["train"]["epochs"] == 2
