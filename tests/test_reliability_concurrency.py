"""Reliability: two drivers on one study directory.

A second `python -m orchestrator sweep` on a study whose lock is held by a live driver is refused with
the owner's pid and host, exit status 3, before Ray starts and before it writes anything. Stale locks
(dead owner, or a recycled pid) are taken over; when several drivers race for a stale lock exactly one
gets it.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.lock import StudyLocked, study_lock
from rundir import LOCK_FILE

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"

HOLDER = """
import sys, time
from orchestrator.lock import study_lock
with study_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def _study(tmp_path: Path, demo_data) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(DEMO), "data_root": str(demo_data.root), "output_root": str(tmp_path / "runs"), "study": "st",
        "seeds": [0], "conditions": {"baseline": {}}, "train": {"epochs": 1},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "use_gpu": False},
    }))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_sweep_on_a_locked_study_is_refused_before_ray_starts(tmp_path, demo_data):
    config = _study(tmp_path, demo_data)
    study_dir = tmp_path / "runs" / "st"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(study_dir)], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        # the first driver is mid-run: a plain sweep must hear "in use", not "pass --resume"
        (study_dir / "baseline-s0").mkdir()
        (study_dir / "baseline-s0" / "status.json").write_text(json.dumps(
            {"state": "running", "epoch": 0, "epochs_total": 1, "error": None, "updated": time.time()}))
        before = {p: p.read_bytes() for p in study_dir.rglob("*") if p.is_file()}
        env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray")}
        env.pop("RAY_ADDRESS", None)
        # both at once (each CLI spends its time importing): a plain sweep, and one asking to resume
        procs = [subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(config), *extra], cwd=REPO,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for extra in ([], ["--resume"])]
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=240)
            assert proc.returncode == 3, stdout[-2000:] + stderr[-2000:]
            line = stderr.strip().splitlines()[-1]
            assert f"in use by pid {holder.pid} on {socket.gethostname()}" in line, stderr
            assert str(study_dir / LOCK_FILE) in line  # where to look if the holder is gone
            assert not (tmp_path / "ray").exists(), "Ray was started by the refused sweep"
            assert {p: p.read_bytes() for p in study_dir.rglob("*") if p.is_file()} == before, \
                "the refused sweep wrote, moved or changed files (the lock included)"
    finally:
        for proc in locals().get("procs", []):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        holder.stdin.close()
        holder.wait(timeout=60)
    assert not (study_dir / LOCK_FILE).exists(), "the holder releases its lock on exit"


# Runs in a fresh interpreter: forking the pytest process itself is unsafe once earlier tests have left
# threads in it (FFCV's numba code starts numba's TBB thread pool, which numba's fork handler then fails to
# shut down: "Unable to join threads to shut down before fork()", and a forked child can hang). A one-thread
# parent forks cheaply and safely, so the contenders start within microseconds of each other.
RACE = """
import json, multiprocessing, os, socket, subprocess, sys, time
from pathlib import Path
from orchestrator.lock import StudyLocked, study_lock
from rundir import LOCK_FILE

def contender(study_dir, start, results, release):
    start.wait()
    try:
        with study_lock(study_dir):
            results.put(("won", os.getpid()))
            release.wait(30)  # hold it until every contender has tried
    except StudyLocked as exc:
        results.put(("refused", str(exc)))
    except BaseException as exc:  # report anything else to the test
        results.put(("crashed", repr(exc)))

study_dir, stale, n, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ctx = multiprocessing.get_context("fork")
for _ in range(rounds):
    study_dir.mkdir(exist_ok=True)
    if stale == "dead_pid":
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        pid = dead.pid
    else:  # recycled: the pid is alive (this process) but started at another time than recorded
        pid = os.getpid()
    (study_dir / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "start": "1",
                                                   "since": time.time() - 60}))
    start_all, release, results = ctx.Barrier(n), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=contender, args=(str(study_dir), start_all, results, release)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=60) for _ in range(n)]
    finally:
        release.set()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    print(json.dumps({"outcomes": outcomes, "lock_left": (study_dir / LOCK_FILE).exists()}), flush=True)
"""


@pytest.mark.parametrize("stale", ["dead_pid", "recycled_pid"])
def test_racing_drivers_take_over_a_stale_lock_exactly_once(tmp_path, stale):
    n, rounds = 4, 25  # the race is rare per round; many cheap rounds make a regression show
    proc = subprocess.run([sys.executable, "-c", RACE, str(tmp_path / "st"), stale, str(n), str(rounds)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == rounds, proc.stdout[-2000:] + proc.stderr[-2000:]
    for round_, result in enumerate(results):
        outcomes = result["outcomes"]
        kinds = sorted(kind for kind, _ in outcomes)
        assert kinds == ["refused"] * (n - 1) + ["won"], f"round {round_}: {outcomes}"
        winner = next(v for k, v in outcomes if k == "won")
        assert all(f"in use by pid {winner}" in v or "could not take the lock" in v for k, v in outcomes if k == "refused"), \
            outcomes
        assert not result["lock_left"], f"round {round_}: the winner did not release its lock"


def test_lock_held_from_another_host_is_refused_not_taken_over(tmp_path):
    study_dir = tmp_path / "st"
    study_dir.mkdir()
    owner = {"pid": 12345, "host": "other-node-7", "start": "1", "since": time.time()}
    (study_dir / LOCK_FILE).write_text(json.dumps(owner))
    with pytest.raises(StudyLocked, match=f"in use by pid 12345 on other-node-7.*delete {study_dir / LOCK_FILE}"):
        with study_lock(study_dir):
            pass
    assert json.loads((study_dir / LOCK_FILE).read_text()) == owner


def test_a_stale_lock_whose_takeover_was_abandoned_names_both_files_to_delete(tmp_path):
    """A driver killed in the middle of a takeover leaves its claim file; others must not guess."""
    study_dir = tmp_path / "st"
    study_dir.mkdir()
    lock = study_dir / LOCK_FILE
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "start": "1", "since": 0}))
    (study_dir / f"{LOCK_FILE}.takeover-{hashlib.sha256(lock.read_text().encode()).hexdigest()[:16]}").write_text("{}")
    with pytest.raises(StudyLocked, match=rf"could not take the lock {lock}.*delete it and any {LOCK_FILE}\.takeover-\*"):
        with study_lock(study_dir):
            pass
    assert lock.exists()  # nothing guessed away
    for leftover in study_dir.glob(f"{LOCK_FILE}*"):
        leftover.unlink()
    with study_lock(study_dir):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
