"""A stop request to a Ray study loses nothing (orchestrator.ray_stop): SIGTERM to the sweep driver (what
`ray job stop` sends) in the middle of an epoch; the run checkpoints at the update its ranks agree on, is
recorded as preempted, the driver exits with EXIT_PREEMPTED, and `sweep --resume` continues from exactly that
update, with metrics bitwise those of an undisturbed run (real Ray in a private PID namespace, CPU, one thread).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml
from ray.tune.search import Searcher

import rundir
from jobs import checkpoint_files as ckpt
from jobs.study import load_study
from orchestrator.ray_stages import StageSearcher
from orchestrator.ray_stop import DriverStop
from rundir import CHECKPOINT_DIR, EVENTS_FILE, EXIT_PREEMPTED, STOP_REQUEST_FILE
from tests.test_ray_run import REPO, cli, env
from tests.tiny import TINY, one_thread, run_local, stable_rows

# 2 epochs of 24 updates; agreement every 3 updates; a step checkpoint every 4: the test's sign of progress.
CONFIG = ["train.epochs=2", "train.batch_size=64", "checkpoint.every_steps=4", "checkpoint.sync_every=3",
          "logging.tensorboard=false", "resources.num_workers=1", "resources.cpus_per_worker=1"]

pytestmark = pytest.mark.skipif(subprocess.run(["unshare", "-fp", "--mount-proc", "true"]).returncode != 0,
                                reason="needs `unshare -fp --mount-proc` (root or user namespaces) to isolate Ray")


def _study(tmp_path: Path, demo_data, output_root: Path) -> Path:
    path = tmp_path / f"study-{output_root.name}.yaml"
    path.write_text(yaml.safe_dump({"base": str(REPO / "configs/demo.yaml"), "study": "st", "seeds": [0],
                                    "output_root": str(output_root), "data_root": str(demo_data.root)}))
    return path


def _updates_checkpointed(run_dir: Path) -> int:
    return max((ckpt.read_manifest(p)["num_updates"] for p in ckpt.numbered(run_dir / CHECKPOINT_DIR)), default=0)


def _driver_pid(namespace: subprocess.Popen) -> int:
    """The sweep driver: the one child of `unshare` (PID 1 of the namespace)."""
    deadline = time.time() + 30
    while not (children := psutil.Process(namespace.pid).children()) and time.time() < deadline:
        time.sleep(0.1)
    return children[0].pid


def test_sigterm_to_the_sweep_driver_stops_at_an_update_and_resume_continues_there(tmp_path, demo_data):
    args = [*TINY, *CONFIG]
    study = _study(tmp_path, demo_data, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "st" / "baseline-s0"
    driver = subprocess.Popen(cli("sweep", str(study), *args, "--no-dashboard"), cwd=REPO, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pid = _driver_pid(driver)
        deadline = time.time() + 120
        while driver.poll() is None and time.time() < deadline and _updates_checkpointed(run_dir) < 4:
            time.sleep(0.1)
        # in epoch 1: the poll may see the checkpoint at 4 or, on a loaded machine, a later one
        assert driver.poll() is None and 4 <= (seen := _updates_checkpointed(run_dir)) < 22, \
            driver.communicate()[0][-3000:]
        psutil.Process(pid).terminate()  # SIGTERM, as `ray job stop` sends it
        out, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()  # --kill-child: the namespace and its Ray go too
            driver.wait()
    assert driver.returncode == EXIT_PREEMPTED, out[-4000:]
    assert "--resume" in out
    status = rundir.read_status(run_dir)
    assert status["state"] == "preempted", (status, out[-3000:])
    stop = status["update"]
    # An agreement point after the signal: every 3 updates, at a step checkpoint (every 4), at an epoch's end (22).
    assert seen < stop < 44 and (stop % 3 == 0 or stop % 4 == 0 or stop == 22), stop
    assert _updates_checkpointed(run_dir) == stop
    assert not (run_dir / STOP_REQUEST_FILE).exists()

    done = subprocess.run(cli("sweep", str(study), *args, "--no-dashboard", "--resume"), cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    resumes = [ln for ln in (run_dir / EVENTS_FILE).read_text().splitlines() if " resume: " in ln]
    assert len(resumes) == 1 and int(resumes[0].rsplit(" update ", 1)[1]) == stop  # zero updates computed twice
    assert rundir.read_status(run_dir)["state"] == "finished"

    reference = load_study(_study(tmp_path, demo_data, tmp_path / "reference"), args).runs[0]
    with one_thread():
        run_local(reference)
    assert stable_rows(run_dir) == stable_rows(reference.run_dir)


def test_no_trial_starts_once_the_driver_was_asked_to_stop():
    stopped = []
    searcher = StageSearcher(["a", "b"], {}, finished=[], is_finished=lambda run: False, stopping=lambda: bool(stopped))
    assert searcher.suggest("t1") == {"run_id": "a"}
    stopped.append("SIGTERM")
    assert searcher.suggest("t2") == Searcher.FINISHED  # "b" is never started: `--resume` starts it


def test_ctrl_c_to_the_driver_asks_the_started_runs_and_a_second_one_changes_nothing(tmp_path):
    """SIGINT (Ctrl-C) to a driver, delivered for real: the engine thread keeps running (no KeyboardInterrupt),
    the runs that started find a stop request, a run that never started finds none once the engine returns."""
    started, never = tmp_path / "started", tmp_path / "never-started"
    started.mkdir()
    stop = DriverStop([started, never])

    def engine() -> str:
        deadline = time.time() + 30
        os.kill(os.getpid(), signal.SIGINT)
        while not stop.requested() and time.time() < deadline:  # one pending signal: a second one would merge
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C
        while not (started / STOP_REQUEST_FILE).exists() and time.time() < deadline:
            time.sleep(0.05)
        never.mkdir()  # a run folder that appears after the request, as a trial that starts late
        while not (never / STOP_REQUEST_FILE).exists() and time.time() < deadline:
            time.sleep(0.05)
        return (started / STOP_REQUEST_FILE).read_text() + (never / STOP_REQUEST_FILE).read_text()

    before = signal.getsignal(signal.SIGINT)
    assert stop.run(engine) == "SIGINT\nSIGINT\n"
    assert stop.requested() and stop.request.count == 2
    assert not (started / STOP_REQUEST_FILE).exists() and not (never / STOP_REQUEST_FILE).exists()
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C works as before once the driver is done
