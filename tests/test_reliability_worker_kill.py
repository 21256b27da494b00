"""One Ray Train worker process SIGKILLed by pid in the middle of an epoch of a 2-worker run.

The run (real Ray in a private PID namespace, CPU, shipped dataset) must finish with per-epoch metrics
identical to an uninterrupted run of the same spec, and recompute at most one checkpoint interval: the
restarted workers resume from the newest checkpoint written before the kill, mid-epoch. The scenario
code is shared with the P7 benchmark (bench/worker_kill.py), which times the same thing at a larger size.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import worker_kill  # noqa: E402

pytestmark = pytest.mark.skipif(subprocess.run(["unshare", "-fp", "--mount-proc", "true"]).returncode != 0,
                                reason="needs `unshare -fp --mount-proc` (root or user namespaces) to isolate Ray")

EVERY_STEPS = 3


@pytest.mark.slow
def test_worker_sigkill_mid_epoch_resumes_exactly(tmp_path, demo_data):
    # Rank 0 is the one that writes checkpoints and metrics: its death is the harder case (the P7
    # benchmark kills rank 1 by default). Either rank's death stops the whole group.
    # Batch 32: 22 updates per epoch, so a kill 0.2 s after the first checkpoint of epoch 2 (update 3 of it)
    # lands inside that epoch even on a fast machine. Epoch 2 is the last: the resumed workers finish it, and
    # its metrics row (written after the resume) must equal the reference's.
    reference, killed = worker_kill.scenario(tmp_path, demo_data.root, epochs=2, every_steps=EVERY_STEPS,
                                             batch_size=32, kill_epoch=2, kill_rank=0, kill_after=0.2)
    run = killed.run
    assert reference.returncode == 0, reference.output_tail
    assert run.returncode == 0, run.output_tail

    # The kill hit the worker of that rank, mid-epoch 2, and the group was restarted with new processes.
    assert killed.workers_before.keys() == killed.workers_after.keys() == {0, 1}
    assert set(killed.workers_before.values()).isdisjoint(killed.workers_after.values())
    resume = killed.resume
    assert resume is not None, run.output_tail
    assert resume["epoch"] == 1 and resume["batch"] > 0  # resumed inside epoch 2 (0-based 1), not at its start

    # At most one checkpoint interval recomputed: the checkpoint resumed from is the newest one written
    # before the failure (checkpoints come every EVERY_STEPS updates, so fewer updates were lost).
    assert resume == killed.last_checkpoint_before_resume
    assert resume["update"] >= killed.kill_checkpoint["update"]

    # Same per-epoch metrics as the uninterrupted run, bit for bit; no duplicate or missing epoch.
    assert worker_kill.metrics_differences(reference.rows, run.rows) == []
    assert [r["epoch"] for r in run.rows] == [1, 2]
    assert [r["resumed_from"] for r in run.rows] == [None, 1]
    assert all(r["resumed_from"] is None for r in reference.rows)
    events = (Path(run.run_dir) / "events.log").read_text()
    assert events.count(" start:") == 1 and events.count(" resume:") == 1
