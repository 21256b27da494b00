"""`python -m orchestrator run|sweep|demo|slurm|slurm-status ...`.

Every config error is printed (one line each) and the command exits with status 2 before Ray starts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_LOCKED = 3
DEMO_STUDY = Path("configs/demo_study.yaml")


def _print_errors(what: str, errors: list[str]) -> int:
    print(f"error: {what}:", file=sys.stderr)
    for line in errors:
        print(f"  {line}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="YAML file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, typed by the schema (e.g. train.epochs=3)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to use (or RAY_ADDRESS); default: start a local Ray and stop it at exit")
    p.add_argument("--resume", action="store_true",
                   help="continue runs that already have files in the output dir (finished runs are kept)")
    p.add_argument("--no-dashboard", action="store_true", help="start the local Ray without its dashboard")


def _cmd_run(args: argparse.Namespace) -> int:
    from jobs.spec import SpecError, load_spec

    from .cluster import resolve_address
    from .study import ClusterShape, StudyLocked, absolute_paths, check_fits, study_lock

    embedded = resolve_address(args.address) is None
    try:
        spec = absolute_paths(load_spec(args.config, args.overrides))
    except SpecError as exc:
        return _print_errors(f"{args.config} is not a valid run spec", exc.errors)
    errors = check_fits([spec], ClusterShape.this_machine()) if embedded else []
    errors += _check_fresh([spec], args.resume)
    if errors:
        return _print_errors(f"{args.config} cannot run", errors)

    from .cluster import ray_session
    from .ray_run import run_one

    try:
        with study_lock(spec.run_dir), ray_session(args.address, dashboard=not args.no_dashboard) as session:
            errors = [] if embedded else check_fits([spec], session.shape)
            if errors:
                return _print_errors(f"{args.config} does not fit the cluster", errors)
            return run_one(spec, session, max_failures=args.max_failures, storage_path=args.storage_path)
    except StudyLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOCKED


def _check_fresh(runs, resume: bool) -> list[str]:
    if resume:
        return []
    from .ray_run import started_runs

    started = started_runs(runs)
    if not started:
        return []
    shown = ", ".join(started[:4]) + (f" and {len(started) - 4} more" if len(started) > 4 else "")
    return [f"output already exists for {shown}; pass --resume to continue, or set another study/run_id"]


def _cmd_sweep(args: argparse.Namespace) -> int:
    from jobs.spec import SpecError

    from .cluster import resolve_address
    from .study import ClusterShape, load_study

    embedded = resolve_address(args.address) is None
    try:
        study = load_study(args.config, args.overrides, cluster=ClusterShape.this_machine() if embedded else None)
    except SpecError as exc:
        return _print_errors(f"{args.config} is not a valid study", exc.errors)
    return _sweep(study, args.address, args.resume, embedded, refuse_existing=not args.resume,
                  dashboard=not args.no_dashboard)


def _sweep(study, address: str | None, resume: bool, embedded: bool, *, refuse_existing: bool,
           dashboard: bool = True) -> int:
    """Lock the study dir, then (only then) start or join Ray and run the sweep."""
    from .cluster import ray_session
    from .ray_run import sweep
    from .study import StudyLocked, check_fits, study_lock

    try:
        with study_lock(study.study_dir):
            errors = _check_fresh(study.runs, resume=not refuse_existing)
            if errors:
                return _print_errors("the study cannot start", errors)
            with ray_session(address, dashboard=dashboard) as session:
                errors = [] if embedded else check_fits(study.runs, session.shape)
                if errors:
                    return _print_errors("the study does not fit the cluster", errors)
                return sweep(study, session, resume=resume, locked=True)
    except StudyLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOCKED


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo

    if "=" in str(args.config):  # `demo key=value ...` without a config path
        args.overrides.insert(0, str(args.config))
        args.config = DEMO_STUDY
    return demo(Path(args.config), args.overrides, data_dir=Path(args.data_dir), address=args.address,
                dashboard=not args.no_dashboard)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Slurm is its own CLI (issue 7); imported only when asked for, so Ray users never need submitit.
    if argv and argv[0] == "slurm":
        from .slurm import main as slurm_main

        return slurm_main(argv[1:])
    if argv and argv[0] == "slurm-status":
        from .slurm import status_main

        return status_main(argv[1:])

    parser = argparse.ArgumentParser(prog="python -m orchestrator", description="Run ViT parameter-reduction studies.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,sweep,demo,slurm,slurm-status}")
    p = sub.add_parser("run", help="one run spec as a Ray TorchTrainer")
    _ray_args(p)
    p.add_argument("--max-failures", type=int, default=2, help="worker-group restarts from the latest checkpoint")
    p.add_argument("--storage-path", default=None, help="where Ray keeps its state (default: <study dir>/.ray)")
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("sweep", help="a study (conditions x grid x seeds) as a Ray Tune grid")
    _ray_args(p)
    p.set_defaults(func=_cmd_sweep)
    p = sub.add_parser("demo", help="shipped dataset -> demo study on local Ray -> analysis report")
    p.add_argument("config", nargs="?", type=Path, default=DEMO_STUDY)
    p.add_argument("overrides", nargs="*", help="key=value overrides of the demo study")
    p.add_argument("--data-dir", default="demo_data", help="where the shipped dataset is built")
    p.add_argument("--address", default=None, help="Ray cluster to use instead of a local Ray")
    p.add_argument("--no-dashboard", action="store_true", help="start the local Ray without its dashboard")
    p.set_defaults(func=_cmd_demo)
    sub.add_parser("slurm", help="a run or study through Slurm (python -m orchestrator slurm -h)")
    sub.add_parser("slurm-status", help="Slurm state of a study's runs (python -m orchestrator slurm-status -h)")
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
