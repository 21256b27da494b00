"""Stages on real Ray: one Tune experiment whose later-stage runs become trials only after the runs they need
finished; a dependency that fails blocks its dependents (CLI, `analysis status`); `--resume` continues the study
in the middle of its stages. Ray runs in a private PID namespace (see test_ray_run.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from rundir import read_timed_events, run_state
from tests import ray_faults
from tests.test_ray_run import SMALL, cli, env, isolated, pytestmark  # noqa: F401  (the same isolation and skip rule)

REPO = Path(__file__).resolve().parents[1]
SHALLOW = [{"name": "shallow", "params": {"keep_ratio": 0.5, "select": "diversity"}}]


def write_stage_study(tmp_path: Path, demo_data) -> Path:
    study = {
        "base": str(REPO / "configs/demo.yaml"), "study": "st", "output_root": str(tmp_path / "runs"),
        "data_root": str(demo_data.root), "seeds": [0, 1],
        "conditions": {
            "baseline": {},
            "pruned": {"strategies": SHALLOW, "overrides": {"model.init": "run:baseline", "train.epochs": 0}},
            "recovered": {"strategies": SHALLOW, "overrides": {
                "model.init": "run:baseline", "distill.teacher": "run:baseline", "distill.loss": "soft"}},
        },
        # One failure of the worker group ends the trial: the fault-injected baseline fails for good.
        "sweep": {"progress_every_s": 5, "max_failures": 0, "trial_max_failures": 0},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def first_event(run_dir: Path) -> float:
    return min(t for t, _, _ in read_timed_events(run_dir))


def finish_event(run_dir: Path) -> float:
    return max(t for t, _, _ in read_timed_events(run_dir, "finish"))


def test_stages_wait_for_dependencies_block_on_failure_and_resume(tmp_path, demo_data):
    config = write_stage_study(tmp_path, demo_data)
    small = [o for o in SMALL if not o.startswith("train.epochs")] + ["train.epochs=1"]
    marker = tmp_path / "killed"
    out = subprocess.run(isolated(ray_faults.cli("sweep", str(config), *small, "--no-dashboard", fail_at_epoch=1, marker=marker)),
                         env=env(), capture_output=True, text=True, timeout=900, cwd=REPO)
    assert marker.exists(), out.stdout[-3000:] + out.stderr[-3000:]
    assert out.returncode == 1
    study_dir = tmp_path / "runs" / "st"
    runs = {p.name: yaml.safe_load((p / "spec.yaml").read_text()) for p in study_dir.iterdir()
            if (p / "spec.yaml").exists()}
    base = {s["seed"]: name for name, s in runs.items() if s["condition"] == "baseline"}
    failed = [name for name in base.values() if not run_state(study_dir / name, 1).finished]
    assert len(failed) == 1, out.stdout[-3000:]
    failed_seed = runs[failed[0]]["seed"]
    good_seed = 1 - failed_seed
    # Later stages of the good seed ran, each only after its baseline had finished.
    for name, s in runs.items():
        if s["condition"] != "baseline":
            assert s["seed"] == good_seed, f"{name} started although its baseline failed"
            assert run_state(study_dir / name, s["train"]["epochs"]).finished
            assert first_event(study_dir / name) >= finish_event(study_dir / base[good_seed])
    blocked_lines = [ln for ln in out.stderr.splitlines() if f"blocked by {failed[0]}" in ln]
    assert len(blocked_lines) == 2, out.stderr[-3000:]
    status = subprocess.run([sys.executable, "-m", "analysis", "status", str(study_dir)], capture_output=True,
                            text=True, env=env(), cwd=REPO)
    assert status.stdout.count(f"blocked by {failed[0]}") == 2, status.stdout

    # --resume: the failed baseline continues (no fault this time: the marker exists), then its stages run.
    out = subprocess.run(cli("sweep", str(config), *small, "--no-dashboard", "--resume"), env=env(), capture_output=True, text=True,
                         timeout=900, cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 finished runs kept" not in out.stdout  # the good seed's 3 runs are kept
    assert "3 finished runs kept, 1 continue from their checkpoints, 2 new" in out.stdout
    for p in study_dir.iterdir():
        if (p / "spec.yaml").exists():
            s = yaml.safe_load((p / "spec.yaml").read_text())
            assert run_state(p, s["train"]["epochs"]).finished
    assert len([p for p in study_dir.iterdir() if (p / "spec.yaml").exists()]) == 6

    # The report: the stage graph, the source columns, and per seed the teacher, the pruned model at epoch 0 and
    # the recovered one.
    from analysis.report import build_report

    rep = build_report(study_dir, tmp_path / "report")
    text = rep.report_md.read_text()
    assert "stage 0: baseline" in text and "stage 1: pruned <- baseline" in text, text
    assert "stage 1: recovered <- baseline" in text and "## Recovery" in text, text
    assert {"init", "teacher", "distill_loss", "alpha", "tau"} <= set(rep.runs.columns)
    rec = rep.recovery.set_index("seed")
    assert sorted(rec.index) == [0, 1] and set(rec["condition"]) == {"recovered"}
    for seed in (0, 1):
        teacher = next(n for n, s in runs.items() if s["condition"] == "baseline" and s["seed"] == seed)
        assert rec.loc[seed, "teacher_run"] == teacher
        assert 0 <= rec.loc[seed, "pruned_top1"] <= 100 and rec.loc[seed, "params_less_pct"] > 0
    assert (tmp_path / "report" / "recovery_curves.png").stat().st_size > 0
