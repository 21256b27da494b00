"""The control plane of a Ray sweep stays small: the Tune trial drivers and the Train controllers of multi-worker
runs never import torch (nor timm, FFCV or the training code, which all import it; only the Train workers do),
and a one-worker run has neither a controller nor a separate worker: its trial trains it.
Checked from outside on a real sweep (embedded Ray, CPU, shipped dataset, in a private PID namespace as in
test_ray_run): every process of that Ray is looked at until the sweep ends, and one whose memory maps torch's
libraries has imported torch. The same look finds torch in the processes that train, so it can fail."""
from __future__ import annotations

import json
import subprocess
import threading
from collections import defaultdict
from pathlib import Path

import pytest

from tests.test_ray_run import REPO, SMALL, cli, env, events, rows, status, write_study

pytestmark = pytest.mark.skipif(subprocess.run(["unshare", "-fp", "--mount-proc", "true"]).returncode != 0,
                                reason="needs `unshare -fp --mount-proc` (root or user namespaces) to isolate Ray")

TORCH_LIBRARIES = ("/torch/lib/", "/torch/_C")
# Ray titles an actor's process "ray::<Class>.<method>".
KINDS = {"ray::ImplicitFunc": "trial", "ray::TrainController": "controller", "ray::RayTrainWorker": "worker"}


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])].append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def descendants(root: int) -> list[int]:
    children, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def kind_of(pid: int) -> str | None:
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return None
    return next((k for prefix, k in KINDS.items() if title.startswith(prefix)), None)


def torch_mapped(pid: int) -> bool:
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return any(lib in maps for lib in TORCH_LIBRARIES)


class ProcessWatch(threading.Thread):
    """Every trial, controller and worker process under `root`, and whether it ever had torch mapped."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root = root
        self.torch: dict[str, dict[int, bool]] = defaultdict(dict)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            for pid in descendants(self.root):
                kind = kind_of(pid)
                if kind is not None:
                    self.torch[kind][pid] = self.torch[kind].get(pid, False) or torch_mapped(pid)


def test_trial_drivers_and_controllers_do_not_import_torch_and_one_worker_runs_need_neither(tmp_path, demo_data):
    """One sweep, two kinds of run: a two-worker run gets a TorchTrainer whose trial driver and controller stay
    torch-free; a one-worker run trains inside its Tune trial (no trainer, no controller, no Ray Train state)."""
    path = write_study(tmp_path, demo_data, seeds=[0], conditions={
        "one": {}, "two": {"overrides": {"resources.num_workers": 2, "train.batch_size": 64}}})
    proc = subprocess.Popen(cli("sweep", str(path), *SMALL, "train.epochs=1", "--no-dashboard"), cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watch = ProcessWatch(proc.pid)
    watch.start()
    try:
        out, _ = proc.communicate(timeout=480)
    finally:
        proc.kill()  # --kill-child: the namespace and its Ray go too (a no-op once the sweep has exited)
        watch.done.set()
        watch.join()
    assert proc.returncode == 0, out[-6000:]
    study_dir = tmp_path / "runs" / "st"
    assert all(status(study_dir / r)["state"] == "finished" for r in ("one-s0", "two-s0"))
    seen = {kind: dict(pids) for kind, pids in watch.torch.items()}
    # One trial per run: the one-worker run's trial trained it (torch), the two-worker run's trial did not.
    assert sorted(seen.get("trial", {}).values()) == [False, True], seen
    # One Train controller (the two-worker run's), torch-free, and that run's two workers, with torch.
    assert list(seen.get("controller", {}).values()) == [False], seen
    assert list(seen.get("worker", {}).values()) == [True, True], seen
    assert (study_dir / ".ray" / "train" / "two-s0").is_dir()
    assert not (study_dir / ".ray" / "train" / "one-s0").exists()
    assert "2 worker(s)" in events(study_dir / "two-s0", "start")[0]
    assert "1 worker(s)" in events(study_dir / "one-s0", "start")[0]
    # Tune got each run's rows (a TorchTrainer run's through the trial reading its folder, not a queue actor).
    for run_id in ("one-s0", "two-s0"):
        results = [json.loads(line) for line in (study_dir / ".ray" / "tune" / run_id / "result.json").read_text().splitlines()]
        assert [(r["epoch"], r["top1"]) for r in results] == [(x["epoch"], x["top1"]) for x in rows(study_dir / run_id)]
