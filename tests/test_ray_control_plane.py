"""The control plane of a Ray sweep stays small: the Tune trial drivers and the Train controllers (one of
each per concurrent run) never import torch, timm, FFCV or the training code; only the Train workers do.
Checked on a real sweep (embedded Ray, CPU, shipped dataset), in a private PID namespace as in test_ray_run."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.test_ray_run import REPO, SMALL, cli, env, status, write_study

pytestmark = pytest.mark.skipif(subprocess.run(["unshare", "-fp", "--mount-proc", "true"]).returncode != 0,
                                reason="needs `unshare -fp --mount-proc` (root or user namespaces) to isolate Ray")


def test_trial_drivers_and_controllers_do_not_import_torch(tmp_path, demo_data):
    probe = tmp_path / "probe"
    probe.mkdir()
    path = write_study(tmp_path, demo_data, seeds=[0, 1], conditions={"baseline": {}})
    proc = subprocess.run(cli("sweep", str(path), *SMALL, "train.epochs=1"), cwd=REPO,
                          env=env(VITREDUCE_DRIVER_PROBE=str(probe)), capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    run_ids = ["baseline-s0", "baseline-s1"]
    assert all(status(tmp_path / "runs" / "st" / r)["state"] == "finished" for r in run_ids)
    found = {p.stem: json.loads(p.read_text()) for p in probe.glob("*.json")}
    # Every run's trial driver and its Train controller reported, from processes other than this one's driver.
    assert set(found) == {f"{kind}-{r}" for kind in ("trial", "controller") for r in run_ids}, sorted(found)
    for name, rec in found.items():
        assert rec["heavy"] == [], f"{name} (pid {rec['pid']}) imported {rec['heavy']}"
    assert found["trial-baseline-s0"]["pid"] != found["controller-baseline-s0"]["pid"]


def test_the_probe_sees_torch_where_it_is_loaded():
    """The check above can fail: in a process that imported the spec (and so torch), the probe names it."""
    code = ("import json, sys, tempfile, pathlib; import jobs.spec; from orchestrator.ray_trial import write_probe; "
            "d = tempfile.mkdtemp(); write_probe(d, 'x', 'r'); print(pathlib.Path(d, 'x-r.json').read_text())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(PYTHONPATH=str(REPO)), capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert {"torch", "jobs.spec"} <= set(json.loads(out)["heavy"])
