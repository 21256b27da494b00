"""`python -m orchestrator run|sweep|demo|slurm|slurm-status|config-keys ...`.

Every config error is printed (one line each) and the command exits with status 2 before Ray starts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.configdoc import add_print_config
from jobs.study import SweepOptions
from orchestrator.options import add_options, options_from_args

DEMO_STUDY = Path("configs/demo_study.yaml")
# `run` trains one spec: of the sweep options only these apply to it.
RUN_OPTIONS = ["max_failures", "storage_path"]


def _ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="YAML file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, typed by the schema (e.g. train.epochs=3)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to use (or RAY_ADDRESS); default: start a local Ray and stop it at exit")
    p.add_argument("--resume", action="store_true",
                   help="keep finished runs, continue unfinished ones from their checkpoints, start runs added since")
    p.add_argument("--no-dashboard", action="store_true", help="start the local Ray without its dashboard")
    add_print_config(p)


def _cmd_run(args: argparse.Namespace) -> int:
    from rundir import print_errors

    from .ray_run import run_config

    if args.print_config:
        from .plan import print_resolved

        return print_resolved(args.config, args.overrides, "run")
    options, errors = options_from_args(SweepOptions, args, RUN_OPTIONS)
    if errors:
        return print_errors("bad options", errors)
    return run_config(args.config, args.overrides, "run", address=args.address, resume=args.resume,
                      options=options, dashboard=not args.no_dashboard, entry=args.entry)[0]


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .ray_run import run_config

    if args.print_config:
        from .plan import print_resolved

        return print_resolved(args.config, args.overrides, "study")
    return run_config(args.config, args.overrides, "study", address=args.address, resume=args.resume,
                      dashboard=not args.no_dashboard, entry=args.entry)[0]


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo

    if "=" in str(args.config):  # `demo key=value ...` without a config path
        args.overrides.insert(0, str(args.config))
        args.config = DEMO_STUDY
    return demo(Path(args.config), args.overrides, data_dir=Path(args.data_dir), address=args.address,
                print_config=args.print_config, dashboard=not args.no_dashboard)


def _config_keys(argv: list[str]) -> int:
    from jobs.configdoc import key_rows, keys_main, run_spec_rows
    from jobs.study import StudyAxes

    return keys_main(argv, "python -m orchestrator config-keys", lambda: key_rows(StudyAxes) + run_spec_rows(),
                     "study and run-spec")


def main(argv: list[str] | None = None, *, entry: str | None = None) -> int:
    """`entry` (module:function, called with the spec and the engine context in every run's training process):
    the training loop (jobs.train) unless a caller substitutes its own, as the tests do to inject faults."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Slurm is its own CLI; imported only when asked for, so Ray users never need submitit.
    if argv and argv[0] == "slurm":
        from .slurm import main as slurm_main

        return slurm_main(argv[1:])
    if argv and argv[0] == "slurm-status":
        from .slurm_status import status_main

        return status_main(argv[1:])
    if argv and argv[0] == "config-keys":
        return _config_keys(argv[1:])

    parser = argparse.ArgumentParser(prog="python -m orchestrator", description="Run ViT parameter-reduction studies.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,sweep,demo,slurm,slurm-status,config-keys}")
    p = sub.add_parser("run", help="one run spec as a Ray TorchTrainer")
    _ray_args(p)
    add_options(p, SweepOptions, RUN_OPTIONS)
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
    add_print_config(p)
    p.set_defaults(func=_cmd_demo)
    sub.add_parser("slurm", help="a run or study through Slurm (python -m orchestrator slurm -h)")
    sub.add_parser("slurm-status", help="Slurm state of a study's runs (python -m orchestrator slurm-status -h)")
    sub.add_parser("config-keys", help="every study and run-spec key with its type, default and doc")
    parser.set_defaults(entry=entry)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
