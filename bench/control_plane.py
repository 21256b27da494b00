"""Control-plane cost of a Ray sweep, per concurrent run, and how planning scales with the study size.

    python bench/record.py -- python bench/control_plane.py                 # 1, 2, 4, 8 concurrent runs; N = 10, 100, 500
    python bench/control_plane.py --quick                                    # smoke test: one run; N = 10

Concurrency part: an embedded Ray with `k` fake CPUs runs a grid of 2k one-worker runs through the product's own
sweep path (orchestrator.ray_run._fit_grid), once per engine: `trial` (the default: each run trains inside its Tune
trial) and `trainer` (a TorchTrainer per run: trial driver, Train controller, helper actors, worker), with
one difference, labelled ENGINE STAND-IN: the workers run `stand_in_loop` instead of the training loop (it
reports a metrics row every `--step-s` seconds and trains nothing; never used by the product). While the
first wave of k runs is up, every process of that Ray is sampled: PSS from /proc/<pid>/smaps_rollup and CPU
time from /proc/<pid>/stat, grouped by kind (trial driver, Train controller, Train worker, each helper actor,
Ray's own daemons). The per-run figure is the control plane (everything but workers and Ray's fixed daemons)
divided by k; for `trial`, whose trial process is the worker, it is what a run holds beyond the trainer point's
worker running the same loop. A least-squares line `a + b*k` is fitted per engine and projected to 64 and 512.
Scheduling latency: the second wave's first step minus the end of the run whose slot it took.

Study part: a study of N runs (5 conditions x N/5 seeds) is validated and expanded (orchestrator.plan) and
its Tune experiment state (one trial per run, as the sweep builds it) is measured: time, driver memory, size.
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
import threading
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
sys.path.insert(0, str(REPO))

GB = 1024 ** 3
# Process title prefix -> kind. Ray titles actor processes "ray::<Class>.<method>"; the rest are its daemons.
KINDS = {
    "ray::ImplicitFunc": "trial_driver",
    "ray::TrainController": "train_controller",
    "ray::RayTrainWorker": "train_worker",
    "ray::execute": "train_worker",  # a Train worker while the controller runs a setup function on it
    "ray::IDLE": "idle_worker",
    "ray::DashboardAgent": "ray_daemons",
    "ray::RuntimeEnvAgent": "ray_daemons",
    # One per cluster, whatever the number of runs (Train's get_or_create).
    "ray::_AutoscalingCoordinatorActor": "shared:AutoscalingCoordinator",
}
RAY_DAEMONS = ("gcs_server", "raylet", "log_monitor", "dashboard", "runtime_env", "monitor.py", "agent")
STAND_IN_EVENT = "stand-in"
NOT_PER_RUN = ("train_worker", "idle_worker", "ray_daemons", "bench_driver", "shared:", "other:")


def per_run_kind(kind: str) -> bool:
    return not kind.startswith(NOT_PER_RUN)


def stand_in_loop(spec, ctx) -> None:
    """ENGINE STAND-IN (benchmark only): reports `epochs` rows, one every VITREDUCE_BENCH_STEP_S seconds,
    and records its first step and its end for the scheduling latency."""
    step = float(os.environ.get("VITREDUCE_BENCH_STEP_S", "1"))
    marks = Path(os.environ["VITREDUCE_BENCH_MARKS"])
    with open(marks / f"{spec.run_id}.start", "w") as f:
        f.write(repr(time.time()))
    for epoch in range(1, spec.train.epochs + 1):
        time.sleep(step)
        ctx.report({"epoch": epoch, "train_loss": 1.0 / epoch, "top1": float(epoch)}, None)
    with open(marks / f"{spec.run_id}.end", "w") as f:
        f.write(repr(time.time()))


def stand_in_trial(config: dict, jobs: dict, storage_path: str, max_failures: int) -> None:
    """ENGINE STAND-IN (benchmark only) for a whole Tune trial, in place of orchestrator.ray_trial.trial_driver
    (no Train controller, no workers): reports `epochs` rows, one every VITREDUCE_BENCH_STEP_S seconds, and
    writes its first and last step, with sub-second times, to the run's events.log."""
    from ray import tune

    from rundir import EventLog

    job = jobs[config["run_id"]]
    Path(job["run_dir"]).mkdir(parents=True, exist_ok=True)
    events = EventLog(job["run_dir"])
    step = float(os.environ.get("VITREDUCE_BENCH_STEP_S", "1"))
    events(STAND_IN_EVENT, f"first step at {time.time():.3f}")
    for epoch in range(1, job["epochs"] + 1):
        time.sleep(step)
        tune.report({"epoch": epoch, "train_loss": 1.0 / epoch, "top1": float(epoch)})
    events(STAND_IN_EVENT, f"last step at {time.time():.3f}")


# --------------------------------------------------------------------------- processes

def _descendants(root: int) -> list[int]:
    children = defaultdict(list)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _kind(pid: int, me: int) -> str | None:
    if pid == me:
        return "bench_driver"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    for prefix, kind in KINDS.items():
        if cmd.startswith(prefix):
            return kind
    if cmd.startswith("ray::"):
        return "helper:" + cmd[5:].split(".")[0].split()[0]
    return "ray_daemons" if any(d in cmd for d in RAY_DAEMONS) else "other:" + Path(cmd.split(" ")[0]).name


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def sample(trials_train: bool = False) -> dict[str, dict]:
    """PSS and CPU by process kind. `trials_train`: the trial processes train their runs (one-worker runs in
    their trial), so they are counted as the runs' training workers."""
    me = os.getpid()
    by: dict[str, dict] = defaultdict(lambda: {"n": 0, "pss": 0, "cpu_s": 0.0})
    for pid in _descendants(me):
        kind = _kind(pid, me)
        if kind is None:
            continue
        if trials_train and kind == "trial_driver":
            kind = "train_worker"
        by[kind]["n"] += 1
        by[kind]["pss"] += _pss(pid)
        by[kind]["cpu_s"] += _cpu_s(pid)
    return dict(by)


class Sampler(threading.Thread):
    """Keeps the sample with the most trial drivers alive (then the largest PSS): the first full wave."""

    def __init__(self, k: int, every_s: float, trials_train: bool = False):
        super().__init__(daemon=True)
        self.k, self.every_s, self.best, self.stop = k, every_s, None, threading.Event()
        self.trials_train = trials_train
        self.first: dict | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            s = sample(self.trials_train)
            workers = s.get("train_worker", {}).get("n", 0)
            if workers >= self.k:
                self.first = self.first or s
                key = lambda x: (x.get("train_worker", {}).get("n", 0), sum(v["pss"] for v in x.values()))  # noqa: E731
                if self.best is None or key(s) > key(self.best):
                    self.best = s
            self.stop.wait(self.every_s)


# --------------------------------------------------------------------------- concurrency

def concurrency_point(k: int, work: Path, data_root: Path, step_s: float, epochs: int, waves: int = 2,
                      engine: str = "trial", dashboard: bool = True) -> dict:
    """`engine`: "trial" (one-worker runs train inside their Tune trial, the product's default) or "trainer"
    (a TorchTrainer per run: controller, helper actors and a worker). `dashboard`: start Ray's dashboard, as a
    sweep does by default (one of Ray's fixed daemons, not a per-run cost)."""
    from jobs.study import SweepOptions
    from orchestrator.cluster import ray_session
    from orchestrator.plan import load_config
    from orchestrator.ray_run import _fit_grid

    name = f"cp{k}-{engine}"
    marks = work / f"marks-{name}"
    marks.mkdir(parents=True)
    os.environ.update(VITREDUCE_BENCH_STEP_S=str(step_s), VITREDUCE_BENCH_MARKS=str(marks))
    study = {"base": str(DEMO), "study": name, "output_root": str(work), "data_root": str(data_root),
             "seeds": list(range(waves * k)), "conditions": {"baseline": {}}}
    path = work / f"{name}.yaml"
    import yaml

    path.write_text(yaml.safe_dump(study))
    _, runs, _ = load_config(path, [f"train.epochs={epochs}", "resources.num_workers=1",
                                    "resources.cpus_per_worker=1"], kind="study")
    sampler = Sampler(k, every_s=1.0, trials_train=engine == "trial")
    with ray_session(None, num_cpus=k, dashboard=dashboard) as session:
        sampler.start()
        t0 = time.time()
        _fit_grid(runs, work / name, session, SweepOptions(progress_every_s=600, one_worker_in_trial=engine == "trial"),
                  entry="bench.control_plane:stand_in_loop")
        wall = time.time() - t0
        sampler.stop.set()
        sampler.join()
    snap = sampler.best or {}
    starts = sorted(float((marks / f"{r.run_id}.start").read_text()) for r in runs if (marks / f"{r.run_id}.start").exists())
    ends = sorted(float((marks / f"{r.run_id}.end").read_text()) for r in runs if (marks / f"{r.run_id}.end").exists())
    # The i-th run of the second wave took the slot of the i-th run of the first wave to end.
    latency = [s - e for s, e in zip(starts[k:], ends[:k])]
    per_run = {kind: round(v["pss"] / k / GB, 4) for kind, v in snap.items() if per_run_kind(kind)}
    cpu = {kind: round(v["cpu_s"] / k, 2) for kind, v in snap.items() if per_run_kind(kind)}
    shared = {kind: round(v["pss"] / GB, 4) for kind, v in snap.items() if kind.startswith("shared:")}
    counts = {kind: v["n"] for kind, v in snap.items()}
    worker = snap.get("train_worker", {}).get("pss", 0) / k / GB
    return {"k": k, "engine": engine, "runs": len(runs), "finished_marks": len(ends), "wall_s": round(wall, 1),
            "control_plane_gb_per_run": round(sum(per_run.values()), 4),
            "all_gb_per_run": round(sum(per_run.values()) + worker, 4),
            "control_plane_gb_total": round(sum(per_run.values()) * k, 4),
            "worker_gb_per_run": round(worker, 4),
            "ray_daemons_gb": round(snap.get("ray_daemons", {}).get("pss", 0) / GB, 4), "shared_gb": shared,
            "per_run_gb_by_kind": per_run, "cpu_s_per_run_by_kind_at_sample": cpu, "processes": counts,
            "scheduling_latency_s": round(statistics.median(latency), 2) if latency else None}


def compare_in_trial(points: list[dict]) -> None:
    """A run trained in its trial has no separate worker: its control plane is what its processes hold beyond
    a Train worker running the same loop at the same k (measured by the trainer point), plus any per-run actor."""
    workers = {q["k"]: q["worker_gb_per_run"] for q in points if q["engine"] == "trainer"}
    for q in points:
        if q["engine"] == "trial" and q["k"] in workers:
            q["trial_process_gb_per_run"] = q["worker_gb_per_run"]
            q["control_plane_gb_per_run"] = round(q["all_gb_per_run"] - workers[q["k"]], 4)
            q["control_plane_gb_total"] = round(q["control_plane_gb_per_run"] * q["k"], 4)
            q["control_plane_rule"] = "trial process + per-run actors - the trainer point's worker"


def fit(points: list[dict]) -> dict:
    xs = [p["k"] for p in points]
    ys = [p["control_plane_gb_total"] for p in points]
    if len(xs) < 2:
        return {}
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    return {"fixed_gb": round(a, 3), "gb_per_concurrent_run": round(b, 3),
            "projected_gb_64": round(a + 64 * b, 1), "projected_gb_512": round(a + 512 * b, 1)}


# --------------------------------------------------------------------------- study size

def study_point(n: int, work: Path, data_root: Path) -> dict:
    import yaml

    from orchestrator.plan import load_config, make_plan
    from orchestrator.ray_engine import trainer_job

    conditions = {"baseline": {}, **{f"shallow{i}": {"strategies": [{"name": "shallow", "params": {"keep_ratio": r}}]}
                                     for i, r in enumerate((0.25, 0.5, 0.75))},
                  "grouped": {"strategies": [{"name": "grouped", "params": {"group_size": 2}}]}}
    study = {"base": str(DEMO), "study": f"n{n}", "output_root": str(work), "data_root": str(data_root),
             "seeds": list(range(n // len(conditions))), "conditions": conditions}
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"n{n}.yaml"
    path.write_text(yaml.safe_dump(study))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    kind, runs, spec = load_config(path, [], kind="study")
    t1 = time.perf_counter()
    plan = make_plan(kind, path, runs, spec, resume=False)
    t2 = time.perf_counter()
    jobs = {r.run_id: trainer_job(r) for r in runs}
    blob = json.dumps(jobs)  # what Tune pickles into the trainable's parameters and the experiment state's trials
    t3 = time.perf_counter()
    return {"n": len(runs), "planned": len(plan.to_submit), "validate_s": round(t1 - t0, 3),
            "plan_s": round(t2 - t1, 3), "jobs_s": round(t3 - t2, 3), "jobs_mb": round(len(blob) / 2**20, 2),
            "driver_maxrss_gb": round(max(rss0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024 / GB, 3)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", default="1,2,4,8", help="concurrent runs to measure (comma-separated)")
    p.add_argument("--engines", default="trial,trainer",
                   help="trial: one-worker runs train inside their Tune trial (the default of sweeps); trainer: a "
                        "TorchTrainer per run (sweep.one_worker_in_trial=false, and every multi-worker run)")
    p.add_argument("--studies", default="10,100,500", help="study sizes N to plan (comma-separated)")
    p.add_argument("--step-s", type=float, default=2.0, help="stand-in: seconds between metrics rows")
    p.add_argument("--epochs", type=int, default=4, help="stand-in: rows per run")
    p.add_argument("--waves", type=int, default=2, help="runs per concurrency point, in units of k (2: latency too)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: one run (concurrency 1, no latency, no fit, no dashboard), 2 rows; N = 10")
    p.add_argument("--data-dir", type=Path, default=REPO / "demo_data")
    args = p.parse_args(argv)
    if args.quick:
        args.concurrency, args.studies, args.epochs, args.step_s, args.waves = "1", "10", 2, 1.0, 1
    from data.demo import prepare_demo

    data_root = prepare_demo(args.data_dir, log=lambda *_: None).root
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
                    "cpus": len(os.sched_getaffinity(0)), "engine": "STAND-IN (reports metrics only, trains nothing)"}
    with tempfile.TemporaryDirectory(prefix="control-plane-") as d:
        studies = [study_point(int(n), Path(d) / "studies", data_root) for n in args.studies.split(",")]
        engines = args.engines.split(",")
        # --quick checks the per-run processes only: no dashboard, whose start is slow on a small machine
        points = [concurrency_point(int(k), Path(d), data_root, args.step_s, args.epochs, args.waves, engine,
                                    dashboard=not args.quick)
                  for k in args.concurrency.split(",") for engine in engines]
    compare_in_trial(points)
    result.update(concurrency=points, studies=studies,
                  fit={e: fit([q for q in points if q["engine"] == e]) for e in engines})
    # Most telling first (the log shows 24): the fits, then per point (all processes per run: in the JSON).
    figures = {f"{e}.{key}": v for e, f in result["fit"].items() for key, v in f.items()}
    figures.update({f"k{q['k']}.{q['engine']}.control_plane_gb_per_run": q["control_plane_gb_per_run"] for q in points})
    figures.update({f"k{q['k']}.{q['engine']}.scheduling_latency_s": q["scheduling_latency_s"] for q in points
                    if q["scheduling_latency_s"] is not None})
    figures.update({f"n{s['n']}.validate_plan_s": round(s["validate_s"] + s["plan_s"], 3) for s in studies})
    result["figures"] = figures
    print(json.dumps(result, indent=1))
    driver = {"trial": "train_worker", "trainer": "trial_driver"}
    bad = [(q["k"], q["engine"]) for q in points if q["finished_marks"] != q["runs"]
           or driver[q["engine"]] not in q["processes"]]
    if bad:
        raise SystemExit(f"concurrency points {bad}: not every stand-in run finished, or no sample caught its processes")
    return result


if __name__ == "__main__":
    main()
