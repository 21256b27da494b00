"""P11: ASHA with random search against the exhaustive grid, on the shipped digits (BENCHMARKS.md, P11).

    python bench/tune_vs_grid.py                  # JSON on stdout; ~6 min on 2 cores
    python bench/tune_vs_grid.py --epochs 4 --trials 6

Two tuned studies of the same condition (the demo ViT shrunk to 2 blocks of width 32, one seed), run side by side
in one invocation, each through `python -m orchestrator sweep` in its own private PID namespace with its own Ray,
one trial at a time (so ASHA's decisions do not depend on timing):
  grid  every point of an lr x weight-decay grid, trained for --epochs (tune.scheduler none);
  asha  --trials random draws from the same ranges (lr log-uniform over the grid's span, weight decay among the
        grid's values), ASHA (grace period 1 epoch, reduction factor --reduction-factor, max_t --epochs).
Both are scored on the same held-out slice of train (tune.holdout), and each winner is then trained once at full
length and scored on val (the confirm run).
Figures:
  gap_points            grid's best held-out top-1 - asha's best (the goal: <= 0.5)
  epochs_ratio          epochs asha trained / epochs the grid trained (the goal: <= 0.4)
  goal_met              both
  val_gap_points        the same gap on val, between the two winners' confirm runs
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
# The tiny ViT of the tests (tests/tiny.py): seconds an epoch on one core, so a grid of full runs fits.
MODEL = {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8}
LRS = [1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2]  # the tiny ViT's best lr inside the range, not at its edge
WEIGHT_DECAYS = [0.0, 0.05, 0.1]


def study(name: str, out: Path, data_root: Path, epochs: int, tune: dict) -> Path:
    doc = {"base": str(DEMO), "study": name, "output_root": str(out), "data_root": str(data_root), "seeds": [0],
           "model": MODEL, "conditions": {"baseline": {}},
           "resources": {"num_workers": 1, "cpus_per_worker": 1}, "data": {"num_workers": 1},
           "sweep": {"progress_every_s": 60},
           "tune": {"trials": 1, "seed": 0, "epochs": epochs, "max_concurrent": 1, "metric": "top1", "mode": "max",
                    "holdout": {"fraction": 0.25, "seed": 0}, "confirm": {"epochs": epochs}, **tune}}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def launch(path: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("RAY_ADDRESS", None)
    cmd = ["unshare", "-fp", "--mount-proc", "--kill-child", sys.executable, "-m", "orchestrator", "sweep", str(path)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def outcome(study_dir: Path, wall_s: float) -> dict:
    """The winner's held-out metric, the epochs and images every trial computed, and the confirm run's val top-1."""
    from rundir import read_metrics

    summary = json.loads((study_dir / "tuning" / "tuning.json").read_text())["conditions"]["baseline"]
    trials = summary["trials"]
    confirm = read_metrics(study_dir / "baseline-s0").to_pylist()
    return {"best_top1": summary["best_metric"], "best_params": summary["best"], "trials": len(trials),
            "stopped": sum(t["status"] == "stopped" for t in trials),
            "epochs": sum(t["epochs_done"] for t in trials), "images": sum(t["images"] for t in trials),
            "val_top1": max(confirm, key=lambda r: r["epoch"])["top1"], "wall_s": round(wall_s, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=8, help="a full trial's epochs (the grid's, ASHA's max_t)")
    p.add_argument("--trials", type=int, default=10, help="ASHA's random draws")
    p.add_argument("--reduction-factor", type=int, default=4, help="ASHA keeps 1/this of each rung (P11 run: 4)")
    p.add_argument("--data-dir", type=Path, default=REPO / "demo_data")
    p.add_argument("--timeout", type=float, default=1500, help="seconds for both studies together")
    args = p.parse_args(argv)
    from data.demo import prepare_demo

    paths = prepare_demo(args.data_dir, log=lambda *_: None)
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
                    "cpus": len(os.sched_getaffinity(0)), "epochs": args.epochs, "grid_points": len(LRS) * len(WEIGHT_DECAYS),
                    "asha_trials": args.trials, "reduction_factor": args.reduction_factor}
    with tempfile.TemporaryDirectory(prefix="tune-vs-grid-") as d:
        out = Path(d)
        grid = study("grid", out, paths.root, args.epochs,
                     {"space": {"train.lr": {"grid": LRS}, "train.weight_decay": {"grid": WEIGHT_DECAYS}},
                      "scheduler": {"name": "none"}})
        asha = study("asha", out, paths.root, args.epochs,
                     {"space": {"train.lr": {"loguniform": [LRS[0], LRS[-1]]},
                                "train.weight_decay": {"choice": WEIGHT_DECAYS}},
                      "trials": args.trials,
                      "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": args.reduction_factor}})
        t0 = time.time()
        procs = {name: launch(path, out / f"{name}.log") for name, path in (("grid", grid), ("asha", asha))}
        walls: dict[str, float] = {}
        while len(walls) < len(procs) and time.time() - t0 < args.timeout:
            walls.update({name: time.time() - t0 for name, proc in procs.items()
                          if name not in walls and proc.poll() is not None})
            time.sleep(1.0)
        for name, proc in procs.items():
            if proc.poll() is None:
                proc.kill()  # --kill-child: the namespace and its Ray go with it
                proc.wait()
            if proc.returncode != 0:
                raise SystemExit(f"{name} study failed (exit {proc.returncode}):\n"
                                 f"{(out / f'{name}.log').read_text()[-4000:]}")
        g, a = (outcome(out / name, walls[name]) for name in ("grid", "asha"))
    result.update({"grid": g, "asha": a})
    gap, ratio = g["best_top1"] - a["best_top1"], a["epochs"] / g["epochs"]
    result["figures"] = {
        "grid_best_top1": g["best_top1"], "asha_best_top1": a["best_top1"], "gap_points": round(gap, 2),
        "grid_epochs": g["epochs"], "asha_epochs": a["epochs"], "epochs_ratio": round(ratio, 3),
        "images_ratio": round(a["images"] / g["images"], 3), "asha_stopped": a["stopped"],
        "within_half_point": gap <= 0.5, "within_40pct_epochs": ratio <= 0.4, "goal_met": gap <= 0.5 and ratio <= 0.4,
        "grid_val_top1": g["val_top1"], "asha_val_top1": a["val_top1"],
        "val_gap_points": round(g["val_top1"] - a["val_top1"], 2),
        "grid_wall_s": g["wall_s"], "asha_wall_s": a["wall_s"],
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
