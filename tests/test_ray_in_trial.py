"""A one-worker run of a sweep trains inside its Tune trial (no TorchTrainer). Its failure handling is Tune's:
the trial's process is SIGKILLed after epoch 1, Tune starts the trial again, and the loop resumes from the run's
own epoch-1 checkpoint and ends with exactly the metrics of an uninterrupted twin run (same spec and seed, other
condition name) trained beside it in the same sweep. Real Ray in a private PID namespace (see test_ray_run)."""
from __future__ import annotations

import subprocess
import sys

from tests import ray_faults
from tests.test_ray_run import REPO, SMALL, env, events, isolated, pytestmark, rows, status, write_study  # noqa: F401

sys.path.insert(0, str(REPO / "bench"))

import worker_kill  # noqa: E402


def test_one_worker_run_killed_in_its_trial_resumes_exactly(tmp_path, demo_data):
    marker = tmp_path / "killed"
    path = write_study(tmp_path, demo_data, seeds=[0], conditions={"a": {}, "b": {}})
    proc = subprocess.run(isolated(ray_faults.cli("sweep", str(path), *SMALL, "checkpoint.every_epochs=1", "--no-dashboard",
                                                  fail_at_epoch=1, marker=marker, rank=0)),
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert marker.read_text().startswith("rank 0 pid"), proc.stdout[-3000:]  # the failure really happened
    study_dir = tmp_path / "runs" / "st"
    killed = [r for r in ("a-s0", "b-s0") if events(study_dir / r, "resume")]
    assert len(killed) == 1, [events(study_dir / r, "resume") for r in ("a-s0", "b-s0")]
    twin = ({"a-s0", "b-s0"} - set(killed)).pop()
    killed_dir, twin_dir = study_dir / killed[0], study_dir / twin
    assert status(killed_dir)["state"] == status(twin_dir)["state"] == "finished"
    assert len(events(killed_dir, "start")) == 1                       # not restarted from scratch
    assert any("from ckpt-000001" in e for e in events(killed_dir, "resume"))
    got, ref = rows(killed_dir), rows(twin_dir)
    assert [r["resumed_from"] for r in got] == [None, 1]
    assert worker_kill.metrics_differences(ref, got) == []
    assert not (study_dir / ".ray" / "train").exists()               # no TorchTrainer was built for either run
