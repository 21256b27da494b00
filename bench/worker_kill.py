"""P7: lost work and time to resume after one Ray Train worker is SIGKILLed mid-epoch (BENCHMARKS.md, P7).

    python bench/worker_kill.py                          # JSON on stdout
    python bench/worker_kill.py --epochs 4 --every-steps 4 --kill-rank 0

Two runs of the same 2-worker spec (the demo ViT on the shipped dataset, `python -m orchestrator run`,
each in a private PID namespace), one after the other in one invocation:
  reference  uninterrupted;
  killed     the worker process of --kill-rank (its pid read from the run's events.log "workers" line,
             mapped to this machine's pid namespace) gets SIGKILL in epoch --kill-epoch, --kill-after
             seconds after the first mid-epoch checkpoint of that epoch. Ray's FailureConfig restarts
             the worker group, which resumes from the newest checkpoint on disk.
Figures:
  resumed_newest      the checkpoint resumed from is the last one written before the failure, so the
                      updates recomputed are fewer than every_steps (lost_updates_max) by construction
  lost_updates_est    updates recomputed, estimated as lost_s / interval_s * every_steps
  lost_s              training time recomputed: kill - time the resumed checkpoint was seen on disk
  interval_s          median time between checkpoints before the kill (lost_s <= interval_s is the target)
  resume_s            kill -> the restarted workers have loaded the checkpoint ("resume" event seen)
  extra_wall_s        killed run's wall time - reference run's wall time: the whole cost of the failure
  metrics_equal       per-epoch metrics (loss, top-1/5, EMA, lr) identical to the reference run

tests/test_reliability_worker_kill.py runs `scenario()` at a smaller size and asserts on it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
# Columns that must not depend on whether a run was interrupted (time- and restart-related ones do).
EXACT_COLUMNS = ("epoch", "train_loss", "top1", "top5", "ema_top1", "ema_top5", "lr")
_CKPT = re.compile(r" checkpoint: (ckpt-\d+) at epoch (\d+) batch (\d+) \(update (\d+)\)")
_RESUME = re.compile(r" resume: from (ckpt-\d+): epoch (\d+) batch (\d+) update (\d+)")
_WORKERS = re.compile(r" workers: (.*)$")


@dataclass
class RunResult:
    run_dir: str
    returncode: int
    wall_s: float
    output_tail: str
    rows: list[dict] = field(default_factory=list)


@dataclass
class KillResult:
    run: RunResult
    killed_rank: int
    killed_pid: int                   # in this machine's pid namespace
    kill_checkpoint: dict             # the newest checkpoint event seen before the kill
    resume: dict | None               # the first "resume" event after the kill
    last_checkpoint_before_resume: dict | None
    lost_s: float | None
    interval_s: float | None
    resume_s: float | None
    workers_before: dict
    workers_after: dict


def _isolated(cmd: list[str]) -> list[str]:
    return ["unshare", "-fp", "--mount-proc", "--kill-child", *cmd]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("RAY_ADDRESS", None)
    return env


def _rows(run_dir: Path) -> list[dict]:
    from rundir import read_metrics

    return sorted(read_metrics(run_dir).to_pylist(), key=lambda r: r["epoch"])


def _events(run_dir: Path) -> list[str]:
    path = run_dir / "events.log"
    return path.read_text().splitlines() if path.exists() else []


def _checkpoint(line: str) -> dict | None:
    m = _CKPT.search(line)
    return m and {"name": m[1], "epoch": int(m[2]), "batch": int(m[3]), "update": int(m[4])}


def _resume(line: str) -> dict | None:
    m = _RESUME.search(line)
    return m and {"name": m[1], "epoch": int(m[2]), "batch": int(m[3]), "update": int(m[4])}


def _workers(line: str) -> dict | None:
    """`rank0=host:pid rank1=host:pid` -> {0: pid, 1: pid} (pids as the workers see them)."""
    m = _WORKERS.search(line)
    if not m:
        return None
    return {int(k[4:]): int(v.rsplit(":", 1)[1]) for k, v in (w.split("=", 1) for w in m[1].split())}


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            out.setdefault(ppid, []).append(int(entry.name))
    return out


def outer_pid(root: int, inner: int) -> int | None:
    """The pid, in this namespace, of the descendant of `root` whose pid inside its namespace is `inner`."""
    children, todo = _children(), [root]
    while todo:
        pid = todo.pop()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("NSpid:") and int(line.split()[-1]) == inner and pid != root:
                    return pid
        except (OSError, ValueError):
            pass
        todo.extend(children.get(pid, []))
    return None


def _launch(run_id: str, out: Path, data_root: Path, overrides: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "orchestrator", "run", str(DEMO), f"data_root={data_root}", f"output_root={out}",
           f"run_id={run_id}", *overrides, "--max-failures=1",
           "--no-dashboard"]  # not part of the recovery: it only slows each Ray's start on a small machine
    return subprocess.Popen(_isolated(cmd), cwd=REPO, env=_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, run_dir: Path, log: Path, t0: float, timeout: float) -> RunResult:
    try:
        proc.wait(timeout=max(1.0, timeout - (time.time() - t0)))
    except subprocess.TimeoutExpired:
        proc.kill()  # --kill-child: the namespace and its Ray go with it
        proc.wait()
    return RunResult(str(run_dir), proc.returncode, round(time.time() - t0, 1), log.read_text()[-4000:], _rows(run_dir))


def run_reference(out: Path, data_root: Path, overrides: list[str], timeout: float = 600) -> RunResult:
    run_dir = out / "demo" / "reference"
    t0 = time.time()
    proc = _launch("reference", out, data_root, overrides, out / "reference.log")
    return _finish(proc, run_dir, out / "reference.log", t0, timeout)


def run_killed(out: Path, data_root: Path, overrides: list[str], *, kill_epoch: int, kill_rank: int,
               kill_after: float, timeout: float = 600) -> KillResult:
    """`kill_epoch` counts from 1; the kill comes after the first mid-epoch checkpoint of that epoch."""
    run_dir = out / "demo" / "killed"
    t0 = time.time()
    proc = _launch("killed", out, data_root, overrides, out / "killed.log")
    seen: dict[str, float] = {}     # checkpoint name -> when this process saw its event
    ckpts: list[dict] = []
    trigger = None
    try:
        while proc.poll() is None and time.time() - t0 < timeout:
            now = time.time()
            for line in _events(run_dir):
                c = _checkpoint(line)
                if c and c["name"] not in seen:
                    seen[c["name"]] = now
                    ckpts.append(c)
                    if trigger is None and c["epoch"] == kill_epoch - 1 and c["batch"] > 0:
                        trigger = now
            if trigger is not None and now - trigger >= kill_after:
                break
            time.sleep(0.05)
        if proc.poll() is not None or trigger is None:
            raise RuntimeError(f"no mid-epoch checkpoint in epoch {kill_epoch} to kill after; output:\n"
                               + (out / "killed.log").read_text()[-3000:])
        workers_before = next(w for w in map(_workers, reversed(_events(run_dir))) if w)
        pid = outer_pid(proc.pid, workers_before[kill_rank])
        if pid is None:
            raise RuntimeError(f"worker rank {kill_rank} (pid {workers_before[kill_rank]} in its namespace) not found")
        t_kill = time.time()
        os.kill(pid, signal.SIGKILL)
        n_events = len(_events(run_dir))
        resume, t_resume = None, None
        while proc.poll() is None and time.time() - t0 < timeout and resume is None:
            resume = next((r for r in map(_resume, _events(run_dir)[n_events:]) if r), None)
            t_resume = time.time()
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    run = _finish(proc, run_dir, out / "killed.log", t0, timeout)
    events = _events(run_dir)
    resume_at = next((i for i, ln in enumerate(events) if i >= n_events and _resume(ln)), len(events))
    before = [c for c in map(_checkpoint, events[:resume_at]) if c]
    workers_after = next((w for w in map(_workers, reversed(events)) if w), {})
    before_kill = [c for c in ckpts if seen[c["name"]] <= t_kill]
    times = [seen[c["name"]] for c in before_kill]
    resumed_seen = seen.get(resume["name"]) if resume else None
    return KillResult(
        run=run, killed_rank=kill_rank, killed_pid=pid, kill_checkpoint=before_kill[-1],
        resume=resume, last_checkpoint_before_resume=before[-1] if before else None,
        lost_s=round(t_kill - resumed_seen, 2) if resumed_seen else None,
        interval_s=round(statistics.median(b - a for a, b in zip(times, times[1:])), 2) if len(times) > 1 else None,
        resume_s=round(t_resume - t_kill, 2) if resume else None,
        workers_before=workers_before, workers_after=workers_after,
    )


def metrics_differences(reference: list[dict], other: list[dict]) -> list[str]:
    """Per-epoch differences in EXACT_COLUMNS (empty when the runs agree bit for bit)."""
    if [r["epoch"] for r in reference] != [r["epoch"] for r in other]:
        return [f"epochs {[r['epoch'] for r in reference]} != {[r['epoch'] for r in other]}"]
    return [f"epoch {a['epoch']} {c}: {a[c]!r} != {b[c]!r}"
            for a, b in zip(reference, other) for c in EXACT_COLUMNS if a[c] != b[c]]


def overrides(epochs: int, every_steps: int, depth: int, batch_size: int) -> list[str]:
    return [f"model.depth={depth}", f"train.epochs={epochs}", "resources.num_workers=2", "resources.cpus_per_worker=1",
            "data.num_workers=1", f"train.batch_size={batch_size}", f"checkpoint.every_steps={every_steps}",
            "checkpoint.keep_last=2"]


def scenario(out: Path, data_root: Path, *, epochs: int, every_steps: int, depth: int = 2, batch_size: int = 64,
             kill_epoch: int = 2, kill_rank: int = 1, kill_after: float = 0.3) -> tuple[RunResult, KillResult]:
    """The reference run, then the killed run, of the same spec."""
    ov = overrides(epochs, every_steps, depth, batch_size)
    reference = run_reference(out, data_root, ov)
    killed = run_killed(out, data_root, ov, kill_epoch=kill_epoch, kill_rank=kill_rank, kill_after=kill_after)
    return reference, killed


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--every-steps", type=int, default=5, help="mid-epoch checkpoint interval (optimizer updates)")
    p.add_argument("--depth", type=int, default=4, help="ViT depth of the demo model")
    p.add_argument("--kill-epoch", type=int, default=2)
    p.add_argument("--kill-rank", type=int, default=1)
    p.add_argument("--kill-after", type=float, default=None,
                   help="seconds after the first mid-epoch checkpoint of --kill-epoch (default: half an interval)")
    p.add_argument("--data-dir", type=Path, default=REPO / "demo_data")
    args = p.parse_args(argv)
    from data.demo import prepare_demo

    paths = prepare_demo(args.data_dir, log=lambda *_: None)
    ov = overrides(args.epochs, args.every_steps, args.depth, 64)
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
                    "cpus": len(os.sched_getaffinity(0)), "epochs": args.epochs, "every_steps": args.every_steps,
                    "depth": args.depth, "workers": 2}
    with tempfile.TemporaryDirectory(prefix="worker-kill-") as d:
        out = Path(d)
        ref = run_reference(out, paths.root, ov)
        if ref.returncode != 0:
            raise SystemExit(f"reference run failed:\n{ref.output_tail}")
        # Half a checkpoint interval after a checkpoint: the expected loss of a kill at a random time.
        per_update = statistics.median(r["epoch_s"] for r in ref.rows[1:] or ref.rows) / _updates_per_epoch(ref)
        kill_after = args.kill_after if args.kill_after is not None else per_update * args.every_steps / 2
        killed = run_killed(out, paths.root, ov, kill_epoch=args.kill_epoch, kill_rank=args.kill_rank,
                            kill_after=kill_after)
        if killed.run.returncode != 0:
            raise SystemExit(f"killed run did not finish:\n{killed.run.output_tail}")
        k = killed
        result.update({
            "reference_wall_s": ref.wall_s, "killed_wall_s": k.run.wall_s,
            "extra_wall_s": round(k.run.wall_s - ref.wall_s, 1),
            "killed_rank": k.killed_rank, "kill_after_s": round(kill_after, 2),
            "kill_checkpoint": k.kill_checkpoint, "resumed_from": k.resume,
            "resumed_newest": k.resume is not None and k.resume == k.last_checkpoint_before_resume,
            "lost_s": k.lost_s, "interval_s": k.interval_s,
            "lost_updates_est": round(k.lost_s / k.interval_s * args.every_steps, 1)
                if k.lost_s is not None and k.interval_s else None,
            "lost_updates_max": args.every_steps,
            "resume_s": k.resume_s,
            "metrics_equal": not metrics_differences(ref.rows, k.run.rows),
            "metrics_differences": metrics_differences(ref.rows, k.run.rows)[:5],
        })
        # What bench/record.py logs: the recomputed share of a checkpoint interval (target <= 1), the
        # time to resume, the whole cost of the failure, and the exactness checks.
        result["figures"] = {
            "lost_over_interval": round(k.lost_s / k.interval_s, 2) if k.lost_s is not None and k.interval_s else None,
            **{key: result[key] for key in ("lost_s", "interval_s", "resume_s", "extra_wall_s",
                                            "resumed_newest", "metrics_equal")},
        }
    print(json.dumps(result, indent=1))
    return result


def _updates_per_epoch(ref: RunResult) -> int:
    ups = [c["update"] for c in map(_checkpoint, _events(Path(ref.run_dir))) if c and c["batch"] == 0 and c["epoch"] == 1]
    return ups[0] if ups else 1


if __name__ == "__main__":
    main()
