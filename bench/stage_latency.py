"""Stage latency on local Ray: how long after a dependency finishes its dependent takes its first step, next to how
long any trial takes from its creation to its first step (a normal trial start).

Runs a two-stage study on the shipped digits (baseline, 1 epoch -> `pruned`: the baseline's best export pruned by
diversity selection and evaluated as built), one trial at a time so nothing else competes, then reads the times:
  dependency finish          the baseline's `finish` event (events.log)
  trial created              Tune's trial logger file (events.out.tfevents.<unix time>)
  first step                 the run's `start` event (the loop's first line after building the model)
Goal: (dependent's first step - dependency finish) - (its first step - its trial's creation), i.e. dependency
finish -> dependent trial created, <= 10 s.
With an existing study (`--study DIR`) only the reading is done.

    python bench/record.py -- python bench/stage_latency.py --out /tmp/stage-latency
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from rundir import find_runs, read_timed_events

REPO = Path(__file__).resolve().parents[1]


def run_study(out: Path) -> Path:
    from data.demo import prepare_demo

    paths = prepare_demo(out / "data", log=lambda *_: None)
    study = {
        "base": str(REPO / "configs/demo.yaml"), "study": "latency", "output_root": str(out / "runs"),
        "data_root": str(Path(paths.root).resolve()), "seeds": [0],
        "conditions": {"baseline": {}, "pruned": {
            "strategies": [{"name": "shallow", "params": {"keep_ratio": 0.5, "select": "diversity"}}],
            "overrides": {"model.init": "run:baseline", "train.epochs": 0}}},
        "train": {"epochs": 1}, "resources": {"num_workers": 1, "cpus_per_worker": 1}, "data": {"num_workers": 1},
        "sweep": {"max_concurrent_trials": 1, "progress_every_s": 30},
    }
    config = out / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(config)], check=True, cwd=REPO)
    return out / "runs" / "latency"


def _created(trial_dir: Path) -> float | None:
    """When Tune started the trial: its TensorBoard logger, created with the trial, names the time (seconds)."""
    stamps = [int(p.name.split(".")[3]) for p in trial_dir.glob("events.out.tfevents.*")]
    return float(min(stamps)) if stamps else None


def first(run_dir: Path, kind: str | None = None) -> float:
    return min(t for t, _, _ in read_timed_events(run_dir, kind))


def latencies(study_dir: Path) -> dict:
    specs = {r.run_id: r.spec for r in find_runs(study_dir) if r.spec is not None}
    tune = study_dir / ".ray" / "tune"
    created = {run: _created(tune / run) for run in specs if (tune / run).is_dir()}
    created = {run: t for run, t in created.items() if t is not None}
    starts = {run: first(study_dir / run, "start") - created[run] for run in specs if run in created}
    waits = {}
    for run, spec in specs.items():
        if not spec.needs:
            continue
        dep = next(r for r, s in specs.items() if s.condition == spec.needs[0] and s.seed == spec.seed)
        finished = max(t for t, _, _ in read_timed_events(study_dir / dep, "finish"))
        waits[run] = {"after": dep, "first_step_after_finish_s": first(study_dir / run, "start") - finished,
                      "trial_created_after_finish_s": created.get(run, float("nan")) - finished}
    normal = min(v for r, v in starts.items() if r not in waits) if len(starts) > len(waits) else float("nan")
    # What the stage hand-over adds: from the dependency's finish to the dependent's trial being created; from
    # there on the dependent is a normal trial (its own creation -> first step is in trial_start_s).
    extra = max(w["trial_created_after_finish_s"] for w in waits.values()) if waits else float("nan")
    return {"study": str(study_dir), "trial_start_s": starts, "dependents": waits,
            "figures": {"normal_trial_start_s": round(normal, 1), "dependent_start_after_finish_s":
                        round(max(w["first_step_after_finish_s"] for w in waits.values()), 1) if waits else None,
                        "extra_over_normal_start_s": round(extra, 1), "goal_extra_s": 10}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/stage-latency"), help="where the study is written")
    p.add_argument("--study", type=Path, help="read an existing study folder instead of running one")
    args = p.parse_args(argv)
    study_dir = args.study or run_study(args.out)
    print(json.dumps(latencies(study_dir)))


if __name__ == "__main__":
    main()
