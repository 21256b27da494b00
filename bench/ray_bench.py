"""Ray overheads, measured side by side on one machine (P3 and P4 of BENCHMARKS.md).

    python bench/ray_bench.py --epochs 4 --threads 1          # all three figures, JSON on stdout
    python bench/ray_bench.py p3 --epochs 6 --rounds 3

P3  Ray Train epoch time / bare loop epoch time: the same run spec (the demo ViT on the shipped
    dataset) trained by `python -m jobs train` (LocalContext, one process) and by
    `python -m orchestrator run` (TorchTrainer, one worker), both with OMP_NUM_THREADS = --threads.
    Median epoch_s of epochs 2.. (epoch 1 holds one-off warm-up) over --rounds alternating pairs.
    Target <= 1.05.
T1  time from `python -m orchestrator run` to the first training step (process start -> start of
    epoch 1 = wall_time - epoch_s of the first metrics row), embedded Ray start included.
P4  sweep wall time / ideal: a 4-run study (2 conditions x 2 seeds) with `sweep`, concurrency from
    the machine (CPUs / CPUs per run); ideal = sum of the runs' own time (sum of their epoch_s) /
    concurrency. Target <= 1.15 (start-up costs weigh more the shorter the runs).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("RAY_ADDRESS", None)
    return env


def _isolated(cmd: list[str]) -> list[str]:
    # A private PID namespace: whatever Ray leaves behind dies with it (never `ray stop`).
    ok = subprocess.run(["unshare", "-fp", "--mount-proc", "true"], capture_output=True).returncode == 0
    return (["unshare", "-fp", "--mount-proc", "--kill-child"] if ok else []) + cmd


def _rows(run_dir: Path) -> list[dict]:
    from rundir import read_metrics

    return sorted(read_metrics(run_dir).to_pylist(), key=lambda r: r["epoch"])


def _common(data_root: Path, out: Path, epochs: int, threads: int) -> list[str]:
    return [f"data_root={data_root}", f"output_root={out}", f"train.epochs={epochs}", "resources.num_workers=1",
            f"resources.cpus_per_worker={threads}", f"data.num_workers={threads}", "train.deterministic=false"]


def _run(cmd: list[str], threads: int) -> float:
    t0 = time.time()
    proc = subprocess.run(_isolated(cmd), cwd=REPO, env=_env(threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return t0


def p3_t1(data_root: Path, work: Path, epochs: int, threads: int, rounds: int) -> dict:
    """Bare and Ray runs alternate (bare, ray, bare, ray, ...) so that drifting background load hits both."""
    common = _common(data_root, work, epochs, threads)
    bare_s, ray_s, first_step = [], [], []
    for i in range(rounds):
        _run([sys.executable, "-m", "jobs", "train", str(DEMO), *common, "study=p3", f"run_id=bare{i}"], threads)
        t0 = _run([sys.executable, "-m", "orchestrator", "run", str(DEMO), *common, "study=p3", f"run_id=ray{i}"], threads)
        bare, ray = _rows(work / "p3" / f"bare{i}"), _rows(work / "p3" / f"ray{i}")
        bare_s += [r["epoch_s"] for r in bare[1:]]  # epoch 1 holds one-off warm-up
        ray_s += [r["epoch_s"] for r in ray[1:]]
        first_step.append((ray[0]["wall_time"] - ray[0]["epoch_s"]) - t0)
    return {
        "p3_ray_over_bare": statistics.median(ray_s) / statistics.median(bare_s),
        "bare_epoch_s": statistics.median(bare_s), "ray_epoch_s": statistics.median(ray_s),
        "t1_run_to_first_step_s": statistics.median(first_step),
    }


def p4(data_root: Path, work: Path, epochs: int, threads: int) -> dict:
    study = {
        "base": str(DEMO), "study": "p4", "output_root": str(work), "data_root": str(data_root),
        "seeds": [0, 1],
        "conditions": {"baseline": {}, "shallow": {"strategies": [{"name": "shallow", "params": {"keep_ratio": 0.5}}]}},
    }
    path = work / "p4.yaml"
    path.write_text(yaml.safe_dump(study))
    common = [c for c in _common(data_root, work, epochs, threads) if not c.startswith(("data_root", "output_root"))]
    t0 = _run([sys.executable, "-m", "orchestrator", "sweep", str(path), *common], threads)
    wall = time.time() - t0
    cpus = len(os.sched_getaffinity(0))
    concurrency = max(1, min(4, cpus // threads))
    run_s = [sum(r["epoch_s"] for r in _rows(d)) for d in sorted((work / "p4").iterdir()) if (d / "metrics.parquet").exists()]
    ideal = sum(run_s) / concurrency
    return {"p4_sweep_over_ideal": wall / ideal, "sweep_wall_s": wall, "ideal_s": ideal, "runs": len(run_s),
            "concurrency": concurrency}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="?", default="all", choices=["all", "p3", "p4"])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="CPU threads per training process")
    p.add_argument("--rounds", type=int, default=2, help="P3: alternating bare/Ray pairs")
    p.add_argument("--data-dir", type=Path, default=REPO / "demo_data")
    args = p.parse_args(argv)
    from data.demo import prepare_demo

    paths = prepare_demo(args.data_dir, log=lambda *_: None)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
              "cpus": len(os.sched_getaffinity(0)), "epochs": args.epochs, "threads": args.threads}
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as d:
        if args.which in ("all", "p3"):
            result.update(p3_t1(paths.root, Path(d), args.epochs, args.threads, args.rounds))
        if args.which in ("all", "p4"):
            result.update(p4(paths.root, Path(d), args.epochs, args.threads))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
