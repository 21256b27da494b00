"""The Ray path end to end, through the CLI as a user runs it (real Ray, CPU, shipped dataset).

Every Ray started here lives in a private PID namespace (`unshare -fp --mount-proc --kill-child`):
killing the `unshare` process kills every process of that Ray, and nothing else on the machine
(`ray stop` would stop other users' Ray instances too, so it is never called).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from orchestrator.cluster import unused_port
from rundir import CHECKPOINT_DIR, EVENTS_FILE, EXIT_PREEMPTED, METRICS_FILE, SPEC_FILE, STATUS_FILE
from tests import ray_faults

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)
RUN_FILES = (SPEC_FILE, METRICS_FILE, CHECKPOINT_DIR, EVENTS_FILE, STATUS_FILE)
# The demo ViT, smaller and for fewer epochs: these tests check orchestration, not learning.
SMALL = ["model.depth=2", "train.epochs=2", "resources.num_workers=1", "resources.cpus_per_worker=1",
         "data.num_workers=1", "train.batch_size=128"]

pytestmark = pytest.mark.skipif(subprocess.run(["unshare", "-fp", "--mount-proc", "true"]).returncode != 0,
                                reason="needs `unshare -fp --mount-proc` (root or user namespaces) to isolate Ray")


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out["PATH"] = VENV_BIN + os.pathsep + out.get("PATH", "")
    out.pop("RAY_ADDRESS", None)
    out.update(extra)
    return out


def isolated(cmd: list[str]) -> list[str]:
    return ["unshare", "-fp", "--mount-proc", "--kill-child", *cmd]


def cli(*args: str, **kw) -> list[str]:
    return isolated([sys.executable, "-m", "orchestrator", *args])


def rows(run_dir: Path) -> list[dict]:
    return sorted(pq.read_table(run_dir / METRICS_FILE).to_pylist(), key=lambda r: r["epoch"])


def status(run_dir: Path) -> dict:
    path = run_dir / STATUS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def events(run_dir: Path, kind: str) -> list[str]:
    path = run_dir / EVENTS_FILE
    return [ln for ln in path.read_text().splitlines() if f" {kind}:" in ln] if path.exists() else []


def processes_matching(pattern: str) -> list[str]:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()


def remaining(find: Callable[[], list], timeout_s: float = 60) -> list:
    """What `find` still returns once it returns nothing or `timeout_s` has passed: processes that were killed
    (a PID namespace whose init died, Ray's daemons after ray.shutdown) exit a moment later."""
    deadline = time.time() + timeout_s
    while (left := find()) and time.time() < deadline:
        time.sleep(0.5)
    return left


def survivors(pattern: str, timeout_s: float = 60) -> list[str]:
    """Processes whose command line contains `pattern`, once none is left or `timeout_s` has passed."""
    return remaining(lambda: processes_matching(pattern), timeout_s)


def write_study(tmp_path: Path, demo_data, conditions: dict, seeds: list[int]) -> Path:
    study = {
        "base": str(REPO / "configs/demo.yaml"),
        "study": "st",
        "output_root": str(tmp_path / "runs"),
        "data_root": str(demo_data.root),
        "seeds": seeds,
        "conditions": conditions,
        "sweep": {"progress_every_s": 5},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_two_worker_run_survives_a_worker_death(tmp_path, demo_data):
    """`run` with 2 workers; one worker SIGKILLs itself after epoch 1: FailureConfig restarts the group,
    which resumes from the epoch-1 checkpoint (not from epoch 0) and finishes."""
    marker = tmp_path / "killed"
    run_dir = tmp_path / "demo" / "two"
    proc = subprocess.Popen(
        isolated(ray_faults.cli("run", str(REPO / "configs/demo.yaml"), f"data_root={demo_data.root}",
                                f"output_root={tmp_path}", "run_id=two", *SMALL, "resources.num_workers=2",
                                "train.batch_size=64", "--max-failures=1", "--no-dashboard", fail_at_epoch=1, marker=marker)),
        cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        proc.kill()  # --kill-child: the namespace and its Ray go too
        out, _ = proc.communicate()
        log = (run_dir / EVENTS_FILE).read_text() if (run_dir / EVENTS_FILE).exists() else "(no events.log)"
        pytest.fail(f"run did not finish in 480 s\nevents.log:\n{log}\noutput:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    assert marker.read_text().startswith("rank 1 pid")        # the failure really happened, on rank 1
    assert all((run_dir / f).exists() for f in RUN_FILES)
    assert status(run_dir)["state"] == "finished"
    got = rows(run_dir)
    assert [r["epoch"] for r in got] == [1, 2]                # no duplicate epoch rows
    assert got[0]["resumed_from"] is None and got[1]["resumed_from"] == 1
    assert len(events(run_dir, "start")) == 1                 # trained from scratch once
    assert any("from ckpt-000001" in e for e in events(run_dir, "resume"))
    assert "2 worker(s)" in events(run_dir, "start")[0]
    assert (tmp_path / "demo" / ".ray" / "train" / "two").is_dir()  # Ray's state next to the run, named by run_id


@pytest.mark.slow
def test_sweep_driver_kill_and_resume(tmp_path, demo_data):
    """A 4-trial sweep (2 conditions x 2 seeds); the driver (and its embedded Ray) is SIGKILLed once a run
    finished; `sweep --resume` keeps the finished runs untouched, completes the others, and also runs the
    runs of a seed added to the study file in between."""
    path = write_study(tmp_path, demo_data, seeds=[0, 1], conditions={
        "baseline": {}, "shallow": {"strategies": [{"name": "shallow", "params": {"keep_ratio": 0.5}}]}})
    study_dir = tmp_path / "runs" / "st"
    run_ids = ["baseline-s0", "baseline-s1", "shallow-s0", "shallow-s1"]
    log = (tmp_path / "sweep1.log").open("w")
    temp_dir = Path(f"/tmp/rs{os.getpid()}")  # every process of this driver's Ray has it in its command line
    driver = subprocess.Popen(cli("sweep", str(path), *SMALL, "--no-dashboard"), cwd=REPO, env=env(RAY_TMPDIR=str(temp_dir)), stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None:
            if any(status(study_dir / r).get("state") == "finished" for r in run_ids):
                break
            time.sleep(0.5)
    finally:
        driver.send_signal(signal.SIGKILL)  # --kill-child: the whole namespace (driver + Ray) dies with it
        driver.wait(timeout=60)
        log.close()
    # unshare is gone; the namespace's processes get their SIGKILL a moment later (runs of the same size
    # finish together, so a second one may have been writing its last files): wait until they are gone.
    left = survivors(str(temp_dir))
    subprocess.run(["rm", "-rf", str(temp_dir)])
    assert not left, f"processes of the killed driver's Ray survived: {left}"
    assert driver.returncode == -signal.SIGKILL, (tmp_path / "sweep1.log").read_text()[-3000:]
    finished = {r for r in run_ids if status(study_dir / r).get("state") == "finished"}
    assert finished and finished != set(run_ids)
    before = {r: ((study_dir / r / METRICS_FILE).stat().st_mtime_ns, (study_dir / r / EVENTS_FILE).read_text())
              for r in finished}
    assert (study_dir / ".study.lock").exists()  # left behind by the killed driver: must be detected as stale

    # Without --resume the existing study is refused, before Ray starts.
    proc = subprocess.run(cli("sweep", str(path), *SMALL), cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--resume" in proc.stderr

    # A seed added to the study meanwhile: --resume also runs the new runs.
    write_study(tmp_path, demo_data, seeds=[0, 1, 2], conditions={
        "baseline": {}, "shallow": {"strategies": [{"name": "shallow", "params": {"keep_ratio": 0.5}}]}})
    run_ids += ["baseline-s2", "shallow-s2"]
    proc = subprocess.run(cli("sweep", str(path), *SMALL, "--no-dashboard", "--resume"), cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    summary = re.search(r"(\d+) finished runs kept, (\d+) continue from their checkpoints, (\d+) new", proc.stdout)
    assert summary, proc.stdout[-3000:]
    kept, resumed, new = map(int, summary.groups())
    assert kept == len(finished) and new >= 2 and kept + resumed + new == len(run_ids)
    for r in run_ids:
        run_dir = study_dir / r
        assert all((run_dir / f).exists() for f in RUN_FILES), r
        assert status(run_dir)["state"] == "finished", r
        assert [x["epoch"] for x in rows(run_dir)] == [1, 2], r
        assert {x["run_id"] for x in rows(run_dir)} == {r} and {x["study"] for x in rows(run_dir)} == {"st"}
        assert len(events(run_dir, "start")) == 1, r  # nothing restarted from scratch
    for r in finished:  # finished runs were not touched
        assert (study_dir / r / METRICS_FILE).stat().st_mtime_ns == before[r][0]
        assert (study_dir / r / EVENTS_FILE).read_text() == before[r][1]
    assert {x["condition"] for r in run_ids for x in rows(study_dir / r)} == {"baseline", "shallow"}
    assert json.loads((study_dir / "runs.json").read_text()).keys() == set(run_ids)
    assert not (study_dir / ".study.lock").exists()
    assert "run" in proc.stdout and "finished" in proc.stdout


def test_ray_job_submit_against_a_local_head(tmp_path, demo_data):
    """`ray job submit --working-dir . -- python -m orchestrator sweep ...` against a head this test starts
    (dashboard + job server on free ports) in its own PID namespace, stopped by killing that namespace.
    The dashboard agent, which runs the submitted job, gets a free port too: on its default (52365) it would
    fail to start beside another Ray's agent, and the head would answer "No available agent" for good."""
    path = write_study(tmp_path, demo_data, seeds=[0], conditions={"baseline": {}})
    port, dash, agent = unused_port(), unused_port(), unused_port()
    temp_dir = Path(f"/tmp/rj{os.getpid()}")  # short: Ray's unix socket paths must stay < 108 chars
    head = subprocess.Popen(
        isolated(["ray", "start", "--head", f"--port={port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                  f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}", "--num-cpus=2",
                  f"--temp-dir={temp_dir}", "--block"]),
        # The head's processes ask its own state API (README, "Several Rays on one machine").
        cwd=REPO, env=env(RAY_API_SERVER_ADDRESS=f"http://127.0.0.1:{dash}"), stdout=(tmp_path / "head.log").open("w"),
        stderr=subprocess.STDOUT)
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", dash), timeout=1):
                    break
            except OSError:
                assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
                time.sleep(1)
        while True:
            proc = subprocess.run(
                ["ray", "job", "submit", "--address", address, "--working-dir", ".", "--",
                 "python", "-m", "orchestrator", "sweep", str(path), *SMALL, "train.epochs=1"],
                cwd=REPO, env=env(RAY_AUTH_MODE="token"), capture_output=True, text=True, timeout=400)
            # The dashboard answers before the head's job agent has registered; until then the server
            # refuses the job (nothing is created) and asks to try again.
            if "No available agent to submit job" not in proc.stderr or time.time() > deadline + 120:
                break
            time.sleep(1)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        assert "succeeded" in proc.stdout + proc.stderr
        run_dir = tmp_path / "runs" / "st" / "baseline-s0"
        assert status(run_dir)["state"] == "finished"
        assert [r["epoch"] for r in rows(run_dir)] == [1]
        assert head.poll() is None  # the job connected to the cluster and did not shut it down
    finally:
        head.send_signal(signal.SIGKILL)
        head.wait(timeout=60)
        subprocess.run(["rm", "-rf", str(temp_dir)])
    left = survivors(str(temp_dir))
    assert not left, f"processes of the test's Ray head survived: {left}"


def test_embedded_ray_is_stopped_when_the_driver_is_terminated(tmp_path, demo_data):
    """No namespace here on purpose: the CLI itself must stop the Ray it started when it gets SIGTERM (after its
    run stopped on request)."""
    temp_dir = Path(f"/tmp/rt{os.getpid()}")  # every process of that Ray has it in its command line
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(REPO / "configs/demo.yaml"), f"data_root={demo_data.root}",
         f"output_root={tmp_path}", "run_id=term", *SMALL, "train.epochs=50"],
        cwd=REPO, env=env(RAY_TMPDIR=str(temp_dir)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        ray_state = tmp_path / "demo" / ".ray" / "train" / "term"  # the TorchTrainer has started
        while time.time() < deadline and driver.poll() is None and not ray_state.exists():
            time.sleep(0.5)
        if not ray_state.exists():
            driver.kill()
            pytest.fail("the trainer never started:\n" + driver.communicate()[0][-3000:])
        assert processes_matching(str(temp_dir))
        driver.send_signal(signal.SIGTERM)
        out, _ = driver.communicate(timeout=120)
        # A stop request (orchestrator.ray_stop): the TorchTrainer's run stopped at an update, not killed.
        assert driver.returncode == EXIT_PREEMPTED, out[-3000:]
        assert "--resume" in out
        assert status(tmp_path / "demo" / "term")["state"] == "preempted", out[-3000:]
        left = survivors(str(temp_dir))
        assert not left, f"Ray processes left after the driver exited: {left}"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for pid in processes_matching(str(temp_dir)):
            os.kill(int(pid), signal.SIGKILL)  # only processes of the Ray this test started
        subprocess.run(["rm", "-rf", str(temp_dir)])
