"""How Tune's side of a sweep scales with the study size N: experiment state and scheduling latency.

    python bench/record.py -- python bench/tune_scale.py                    # N = 10, 100, 500; 4 runs at once
    python bench/tune_scale.py --quick                                       # smoke test: N = 5, 2 at once, 1 row

For each N, a study of N runs (5 conditions x N/5 seeds) is validated by orchestrator.plan and trained through
the product's sweep path (orchestrator.ray_run._fit_grid: the same Tuner, TuneConfig, progress reporter,
loggers and storage) on a fresh embedded Ray with `--concurrency` fake CPUs, with one difference, labelled
ENGINE STAND-IN: each Tune trial runs bench.control_plane.stand_in_trial instead of the trial driver (no Train
controller, no workers; it reports `--epochs` rows `--step-s` apart and writes its first and last step to the
run's events.log). What a run's own start-up costs (controller, helper actors, workers) does not depend on N
and is measured by bench/control_plane.py; this isolates what does: Tune's controller holding N trials.

Measured per N, from the runs' events.log files and Tune's own save function (timed in this process):
- scheduling latency: the i-th run to start after the first wave minus the i-th end (the slot it took);
  median, 90th percentile, and the median over the first and the last fifth of the study;
- experiment state: size of Tune's experiment_state-*.json at its last save, number of saves, seconds per save
  (median, and the last save, which holds every trial);
- the driver's peak RSS and the study's wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
sys.path.insert(0, str(REPO))

from bench.control_plane import STAND_IN_EVENT, stand_in_trial  # noqa: E402

GB = 1024 ** 3
CONDITIONS = {"baseline": {}, "grouped": {"strategies": [{"name": "grouped", "params": {"group_size": 2}}]},
              **{f"shallow{i}": {"strategies": [{"name": "shallow", "params": {"keep_ratio": r}}]}
                 for i, r in enumerate((0.25, 0.5, 0.75))}}


class SaveTimer:
    """Wraps Tune's TuneController.save_to_dir (the experiment-state write) to time each call and size its file."""

    def __init__(self):
        self.saves: list[dict] = []

    def __enter__(self):
        from ray.tune.execution.tune_controller import TuneController

        self._cls, self._orig = TuneController, TuneController.save_to_dir
        timer = self

        def timed(controller):
            t0 = time.perf_counter()
            timer._orig(controller)
            seconds = time.perf_counter() - t0
            path = Path(controller._storage.experiment_driver_staging_path, controller.experiment_state_file_name)
            timer.saves.append({"trials": len(controller.get_trials()), "s": seconds,
                                "bytes": path.stat().st_size if path.exists() else 0})

        TuneController.save_to_dir = timed
        return self

    def __exit__(self, *exc):
        self._cls.save_to_dir = self._orig


def _marks(run_dir: Path) -> tuple[float | None, float | None]:
    from rundir import read_events

    first = last = None
    for text in read_events(run_dir, STAND_IN_EVENT):
        what, _, stamp = text.rpartition(" at ")
        if what == "first step":
            first = float(stamp)
        elif what == "last step":
            last = float(stamp)
    return first, last


def latencies(starts: list[float], ends: list[float], k: int) -> list[float]:
    """The i-th run to start after the first wave of k took the slot of the i-th run to end."""
    starts, ends = sorted(starts), sorted(ends)
    return [s - e for s, e in zip(starts[k:], ends)]


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


def study_point(n: int, k: int, work: Path, data_root: Path, step_s: float, epochs: int) -> dict:
    from jobs.study import SweepOptions
    from orchestrator.cluster import ray_session
    from orchestrator.plan import load_config
    from orchestrator.ray_run import _fit_grid

    study = {"base": str(DEMO), "study": f"tune{n}", "output_root": str(work), "data_root": str(data_root),
             "seeds": list(range(max(1, n // len(CONDITIONS)))), "conditions": CONDITIONS}
    path = work / f"tune{n}.yaml"
    path.write_text(yaml.safe_dump(study))
    t0 = time.perf_counter()
    _, runs, _ = load_config(path, [f"train.epochs={epochs}", "resources.num_workers=1",
                                    "resources.cpus_per_worker=1"], kind="study")
    validate_s = time.perf_counter() - t0
    study_dir = work / f"tune{n}"
    os.environ["VITREDUCE_BENCH_STEP_S"] = str(step_s)
    with ray_session(None, num_cpus=k, dashboard=False) as session, SaveTimer() as timer:
        t0 = time.time()
        _fit_grid(runs, study_dir, session, SweepOptions(progress_every_s=600), trial=stand_in_trial)
        wall = time.time() - t0
    marks = [_marks(study_dir / r.run_id) for r in runs]
    starts = [s for s, _ in marks if s is not None]
    ends = [e for _, e in marks if e is not None]
    lat = latencies(starts, ends, k)
    fifth = max(1, len(lat) // 5)
    saves = timer.saves
    return {"n": len(runs), "k": k, "finished": len(ends), "validate_s": round(validate_s, 2), "wall_s": round(wall, 1),
            "latency_median_s": _median(lat),
            "latency_p90_s": round(sorted(lat)[int(0.9 * (len(lat) - 1))], 3) if lat else None,
            "latency_first_fifth_s": _median(lat[:fifth]), "latency_last_fifth_s": _median(lat[-fifth:]),
            "state_saves": len(saves), "state_kb_last": round(saves[-1]["bytes"] / 1024, 1) if saves else None,
            "state_trials_last": saves[-1]["trials"] if saves else None,
            "state_save_s_median": _median([s["s"] for s in saves]),
            "state_save_s_last": round(saves[-1]["s"], 4) if saves else None,
            "state_save_s_max": round(max(s["s"] for s in saves), 4) if saves else None,
            "driver_maxrss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB, 3)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", default="10,100,500", help="study sizes N (comma-separated)")
    p.add_argument("--concurrency", type=int, default=4, help="runs at once (fake CPUs of the embedded Ray)")
    p.add_argument("--step-s", type=float, default=0.5, help="stand-in: seconds between metrics rows")
    p.add_argument("--epochs", type=int, default=2, help="stand-in: rows per run")
    p.add_argument("--quick", action="store_true", help="smoke test: N = 5, 2 at once, 1 row each")
    p.add_argument("--data-dir", type=Path, default=REPO / "demo_data")
    args = p.parse_args(argv)
    if args.quick:
        args.studies, args.concurrency, args.epochs, args.step_s = "5", 2, 1, 0.2
    from data.demo import prepare_demo

    data_root = prepare_demo(args.data_dir, log=lambda *_: None).root
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
                    "cpus": len(os.sched_getaffinity(0)),
                    "engine": "STAND-IN Tune trial (reports metrics only; no Train controller, no workers)"}
    with tempfile.TemporaryDirectory(prefix="tune-scale-") as d:
        points = [study_point(int(n), args.concurrency, Path(d), data_root, args.step_s, args.epochs)
                  for n in args.studies.split(",")]
    result["studies"] = points
    figures = {}
    for q in points:
        for key in ("latency_median_s", "latency_first_fifth_s", "latency_last_fifth_s", "state_kb_last",
                    "state_save_s_last", "state_save_s_median", "wall_s"):
            figures[f"n{q['n']}.{key}"] = q[key]
    result["figures"] = figures
    print(json.dumps(result, indent=1))
    bad = [q["n"] for q in points if q["finished"] != q["n"] or not q["state_saves"]]
    if bad:
        raise SystemExit(f"studies {bad}: not every stand-in run finished, or Tune never saved its state")
    return result


if __name__ == "__main__":
    main()
