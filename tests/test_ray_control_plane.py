"""The control plane of a Ray sweep stays small: the Tune trial drivers and the Train controllers of multi-worker
runs never import torch, timm, FFCV or the training code (only the Train workers do), and a one-worker run has
neither a controller nor a separate worker: its trial trains it.
Checked on a real sweep (embedded Ray, CPU, shipped dataset), in a private PID namespace as in test_ray_run."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.test_ray_run import REPO, SMALL, cli, env, events, rows, status, write_study

pytestmark = pytest.mark.skipif(subprocess.run(["unshare", "-fp", "--mount-proc", "true"]).returncode != 0,
                                reason="needs `unshare -fp --mount-proc` (root or user namespaces) to isolate Ray")


def test_trial_drivers_and_controllers_do_not_import_torch_and_one_worker_runs_need_neither(tmp_path, demo_data):
    """One sweep, two kinds of run: a two-worker run gets a TorchTrainer whose trial driver and controller stay
    torch-free; a one-worker run trains inside its Tune trial (no trainer, no controller, no Ray Train state)."""
    probe = tmp_path / "probe"
    probe.mkdir()
    path = write_study(tmp_path, demo_data, seeds=[0], conditions={
        "one": {}, "two": {"overrides": {"resources.num_workers": 2, "train.batch_size": 64}}})
    proc = subprocess.run(cli("sweep", str(path), *SMALL, "train.epochs=1"), cwd=REPO,
                          env=env(VITREDUCE_DRIVER_PROBE=str(probe)), capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    study_dir = tmp_path / "runs" / "st"
    assert all(status(study_dir / r)["state"] == "finished" for r in ("one-s0", "two-s0"))
    found = {p.stem: json.loads(p.read_text()) for p in probe.glob("*.json")}
    assert set(found) == {"trial-two-s0", "controller-two-s0", "trial-one-s0", "in-trial-one-s0"}, sorted(found)
    for name in ("trial-two-s0", "controller-two-s0"):
        assert found[name]["heavy"] == [], f"{name} (pid {found[name]['pid']}) imported {found[name]['heavy']}"
    assert found["trial-two-s0"]["pid"] != found["controller-two-s0"]["pid"]
    # The one-worker run's loop ran in its trial's process, and Ray Train never saw it.
    assert found["in-trial-one-s0"]["pid"] == found["trial-one-s0"]["pid"]
    assert found["trial-one-s0"]["heavy"] == [] and "torch" in found["in-trial-one-s0"]["heavy"]
    assert (study_dir / ".ray" / "train" / "two-s0").is_dir()
    assert not (study_dir / ".ray" / "train" / "one-s0").exists()
    assert "2 worker(s)" in events(study_dir / "two-s0", "start")[0]
    # Tune got each run's rows (a TorchTrainer run's through the trial reading its folder, not a queue actor).
    for run_id in ("one-s0", "two-s0"):
        results = [json.loads(line) for line in (study_dir / ".ray" / "tune" / run_id / "result.json").read_text().splitlines()]
        assert [(r["epoch"], r["top1"]) for r in results] == [(x["epoch"], x["top1"]) for x in rows(study_dir / run_id)]
    assert "1 worker(s)" in events(study_dir / "one-s0", "start")[0]


def test_the_probe_sees_torch_where_it_is_loaded():
    """The check above can fail: in a process that imported the spec (and so torch), the probe names it."""
    code = ("import json, sys, tempfile, pathlib; import jobs.spec; from orchestrator.ray_trial import write_probe; "
            "d = tempfile.mkdtemp(); write_probe(d, 'x', 'r'); print(pathlib.Path(d, 'x-r.json').read_text())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(PYTHONPATH=str(REPO)), capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert {"torch", "jobs.spec"} <= set(json.loads(out)["heavy"])
