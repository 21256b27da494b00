"""A worker node is lost mid-run (real Ray, CPU, shipped dataset, the CLI as a user runs it).

`tests/ray_nodes.py` starts a `ray.cluster_utils.Cluster` (a 0-CPU head + two 1-CPU nodes, so the
2-worker run puts one worker on each node), runs `python -m orchestrator run` against it (RAY_ADDRESS),
removes the node hosting rank 0 during epoch 3 (after ckpt-000002), adds a replacement node once Ray Train
has logged a worker-group start timeout (so the run waited across at least one scheduling timeout for the
replacement, as it would for a cloud node, however slow the machine), and reports what it did as JSON. Ray
Train's worker-group start timeout is lowered to 5 s (its default, 60 s, is what a test cannot wait for):
those timeouts must not use up `--max-failures=1`, which the node loss takes.
The harness is PID 1 of a private PID namespace (`unshare -fp --mount-proc --kill-child`): every Ray
process dies with it (never `ray stop`).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rundir import EVENTS_FILE, METRICS_FILE, STATUS_FILE
from tests.test_ray_run import processes_matching, remaining, survivors

REPO = Path(__file__).resolve().parents[1]
HARNESS = Path(__file__).with_name("ray_nodes.py")
EPOCHS = 5  # epochs of ~1 s on an idle machine: the node loss (0.5 s after epoch 2) must land mid-run
REMOVE_AFTER = 2  # ckpt-000002 = end of epoch 2 (one checkpoint per epoch)
START_TIMEOUT = 5  # s, RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (Ray's default: 60); a spurious one is not charged
REPLACE_AFTER_TIMEOUTS = 1  # start timeouts logged after the node loss before the harness adds a node
SMALL = ["model.depth=2", f"train.epochs={EPOCHS}", "resources.num_workers=2", "resources.cpus_per_worker=1",
         "data.num_workers=1", "train.batch_size=64", "checkpoint.every_epochs=1"]

pytestmark = pytest.mark.skipif(subprocess.run(["unshare", "-fp", "--mount-proc", "true"]).returncode != 0,
                                reason="needs `unshare -fp --mount-proc` (root or user namespaces) to isolate Ray")


def _events(run_dir: Path) -> list[tuple[str, str]]:
    """(kind, text) per events.log line: `<time> <host> rank<r> <kind>: <text>`."""
    out = []
    for line in (run_dir / EVENTS_FILE).read_text().splitlines():
        m = re.match(r"\S+ \S+ rank\d+ (\w+): (.*)$", line)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def _namespace_members(ns: str) -> list[int]:
    """Pids of processes still in the PID namespace `ns` (e.g. 'pid:[4026532301]')."""
    left = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "ns" / "pid") == ns:
                    left.append(int(proc.name))
            except OSError:
                continue
    return left


@pytest.mark.slow  # ~2 min: cluster start, one node loss, one start timeout without a node, resume
def test_run_survives_the_loss_of_a_worker_node(tmp_path, demo_data):
    temp_dir = Path(f"/tmp/rn{os.getpid()}")  # short: Ray's unix socket paths must stay < 108 chars
    out, log = tmp_path / "nodes.json", tmp_path / "cli.log"
    run_dir = tmp_path / "demo" / "nodes"
    env = dict(os.environ, RAY_TMPDIR=str(temp_dir), PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    env.pop("RAY_ADDRESS", None)
    env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(START_TIMEOUT)
    cmd = ["unshare", "-fp", "--mount-proc", "--kill-child", sys.executable, str(HARNESS),
           "--out", str(out), "--log", str(log), "--run-dir", str(run_dir),
           "--remove-after-checkpoint", str(REMOVE_AFTER), "--remove-delay", "0.5", "--victim-rank", "0",
           "--replace-after-timeouts", str(REPLACE_AFTER_TIMEOUTS), "--timeout", "420", "--",
           sys.executable, "-m", "orchestrator", "run", str(REPO / "configs/demo.yaml"),
           f"data_root={demo_data.root}", f"output_root={tmp_path}", "run_id=nodes", *SMALL, "--max-failures=1"]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
        report = json.loads(out.read_text()) if out.exists() else {}
        ns = report.get("pid_namespace")
        left = survivors(str(temp_dir))
        assert not left, f"processes of the test's Ray survived: {left}"
        if ns:  # killed with the namespace's init; the kernel reaps them a moment later
            assert not remaining(lambda: _namespace_members(ns)), "processes of the harness's PID namespace survived"
    finally:
        for pid in processes_matching(str(temp_dir)):
            os.kill(int(pid), 9)  # only processes of the Ray this test started
        subprocess.run(["rm", "-rf", str(temp_dir)])

    def context() -> str:
        cli = log.read_text()[-3000:] if log.exists() else "(no output)"
        ev = (run_dir / EVENTS_FILE).read_text() if (run_dir / EVENTS_FILE).exists() else "(no events.log)"
        return f"\nharness: {json.dumps(report)[-3000:]}\n{proc.stderr[-2000:]}\nevents.log:\n{ev}\ncli:\n{cli}"

    assert proc.returncode == 0 and "error" not in report, context()
    assert report["returncode"] == 0 and report["removed"], context()
    steps = {e["what"]: e for e in report["events"]}
    assert {"node removed", "node added", "command exited"} <= steps.keys(), context()
    removal = steps["node removed"]

    # Each worker node hosted one Ray Train worker, and the removed one hosted rank 0.
    assert sorted(len(p) for p in removal["train_workers"].values()) == [1, 1], context()
    assert removal["train_workers"][removal["node"]] == [removal["pid"]] == [removal["ranks"]["0"]], context()
    assert all(removal["nodes_before"][w]["available"] == 0 for w in report["workers"]), context()
    assert removal["node"] in report["workers"] and report["replacement"] not in report["workers"]

    # The loss happened mid-run: after ckpt-000002, before the last epoch. `newest` is the newest checkpoint
    # written before the restart: normally ckpt-000002, or ckpt-000003 when rank 0 finished epoch 3 while
    # its node was being torn down (seen on an idle machine: removing a node takes a moment).
    events = _events(run_dir)
    kinds = [k for k, _ in events]
    assert "resume" in kinds, context()
    written = [int(t.split()[0].split("-")[1]) for k, t in events[:kinds.index("resume")] if k == "checkpoint"]
    newest = max(written)
    assert max(int(c.split("-")[1]) for c in removal["checkpoints_after"]) <= newest, context()
    assert REMOVE_AFTER <= newest < EPOCHS, context()

    # Ray Train retried the worker group once for the node loss (the only failure allowed), then waited for
    # the replacement through worker-group start timeouts, which it does not charge to max_failures.
    decisions = report["failure_decisions"]
    assert {d["decision"] for d in decisions} == {"RETRY"}, context()
    assert [d["count"] for d in decisions if d["source"] == "worker group"] == [1], context()
    timeouts = [d for d in decisions if d["source"] == "controller"]
    assert timeouts and all("worker group startup timed out" in d["error"] for d in timeouts), context()

    # The run restarted its worker group once, resumed from that checkpoint (not from scratch), finished.
    assert kinds.count("start") == 1 and kinds.count("finish") == 1, context()
    resumes = [t for k, t in events if k == "resume"]
    assert len(resumes) == 1 and resumes[0].startswith(f"from ckpt-{newest:06d}: epoch {newest} "), context()
    workers = [t for k, t in events if k == "workers"]
    assert len(workers) == 2 and f":{removal['pid']}" not in workers[1], context()  # a new rank 0 process
    epochs_logged = [int(t.split("/")[0]) for k, t in events if k == "epoch"]
    assert epochs_logged == list(range(1, EPOCHS + 1)), context()  # no epoch after ckpt-2 lost or repeated

    rows = sorted(pq.read_table(run_dir / METRICS_FILE).to_pylist(), key=lambda r: r["epoch"])
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1)), context()
    assert [r["resumed_from"] for r in rows] == [None] * newest + [newest] * (EPOCHS - newest)
    assert json.loads((run_dir / STATUS_FILE).read_text())["state"] == "finished"
    # the CLI's closing summary: one row per run, its state and epochs done / asked for
    assert re.search(rf"^{run_dir.name}\s+finished\s+{EPOCHS}/{EPOCHS}\b", log.read_text(), re.M), context()
