"""P7b: updates recomputed after a preemption signal (goal 0; BENCHMARKS.md, beside P7).

    python bench/stop_signal.py                     # JSON on stdout
    python bench/stop_signal.py --epochs 3 --signal-at 7 --sync-every 20

Three `python -m jobs train` processes of the demo ViT on the shipped dataset, with checkpoint.every_steps=0
(before the stop request existed, a signal lost everything since the last epoch's checkpoint):
  reference   uninterrupted;
  stopped     SIGTERM (what Slurm's USR2 does through the same flag) once the console has printed update
              --signal-at of epoch 2; the process checkpoints at the next agreement point and exits 75;
  continued   the same command again, which resumes from that checkpoint and finishes.
Figures, counted from the console's step lines (one per optimizer update: logging.every_steps=1), not from
the loop's own bookkeeping:
  updates_recomputed  updates computed by stopped + continued - updates of the run (goal 0)
  updates_after_signal  updates computed between the signal and the stop (<= sync_every)
  stop_s              signal -> the stopped process has exited (checkpoint written)
  metrics_equal       every epoch's metrics bitwise equal to the reference run's
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
EXACT_COLUMNS = ("epoch", "train_loss", "top1", "top5", "ema_top1", "ema_top5", "lr")
STEP = re.compile(r"epoch (\d+)/\d+ step (\d+)/(\d+) ")


def _argv(data_root: Path, out: Path, epochs: int, sync_every: int) -> list[str]:
    return [sys.executable, "-m", "jobs", "train", str(DEMO), f"data_root={data_root}", f"output_root={out}",
            "run_id=p7b", f"train.epochs={epochs}", "checkpoint.every_steps=0", f"checkpoint.sync_every={sync_every}",
            "logging.every_steps=1", "logging.tensorboard=false"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _rows(run_dir: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = sorted(pq.read_table(run_dir / "metrics.parquet").to_pylist(), key=lambda r: r["epoch"])
    return [{k: r[k] for k in EXACT_COLUMNS} for r in rows]


def _steps(text: str) -> list[tuple[int, int]]:
    return [(int(m[1]), int(m[2])) for m in STEP.finditer(text)]


def scenario(data_root: Path, work: Path, epochs: int, signal_at: int, sync_every: int) -> dict:
    ref = subprocess.run(_argv(data_root, work / "ref", epochs, sync_every), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=1800)
    if ref.returncode:
        raise RuntimeError(f"reference run failed:\n{ref.stdout[-3000:]}{ref.stderr[-3000:]}")
    total = len(_steps(ref.stderr + ref.stdout))

    argv = _argv(data_root, work / "int", epochs, sync_every)
    proc = subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, signalled_at = [], None
    for line in proc.stdout:
        lines.append(line)
        if signalled_at is None and (2, signal_at) in _steps(line):
            proc.send_signal(signal.SIGTERM)
            signalled_at = time.monotonic()
    rc = proc.wait()
    stop_s = time.monotonic() - signalled_at if signalled_at is not None else None
    stopped_text = "".join(lines)
    if rc != 75:
        raise RuntimeError(f"the stopped run exited {rc}, expected 75:\n{stopped_text[-3000:]}")
    cont = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=1800)
    if cont.returncode:
        raise RuntimeError(f"the continued run failed:\n{cont.stdout[-3000:]}{cont.stderr[-3000:]}")
    stopped, continued = _steps(stopped_text), _steps(cont.stderr + cont.stdout)
    signal_index = stopped.index((2, signal_at))
    return {
        "updates_total": total, "updates_stopped": len(stopped), "updates_continued": len(continued),
        "updates_recomputed": len(stopped) + len(continued) - total,
        "updates_after_signal": len(stopped) - 1 - signal_index,
        "stop_s": round(stop_s, 2) if stop_s is not None else None,
        "metrics_equal": _rows(work / "int" / "demo" / "p7b") == _rows(work / "ref" / "demo" / "p7b"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--signal-at", type=int, default=7, help="update of epoch 2 after which SIGTERM is sent")
    parser.add_argument("--sync-every", type=int, default=20, help="checkpoint.sync_every")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from data.demo import prepare_demo

    with tempfile.TemporaryDirectory(prefix="p7b-") as tmp:
        work = Path(tmp)
        demo = prepare_demo(work / "data", log=lambda *_: None)
        figures = scenario(demo.root, work, args.epochs, args.signal_at, args.sync_every)
    print(json.dumps({"benchmark": "P7b", "machine": platform.processor() or platform.machine(),
                      "config": vars(args), "figures": figures}, indent=1))
    return 0 if figures["updates_recomputed"] == 0 and figures["metrics_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
