"""`python -m jobs train CONFIG [key=value ...] [--resume]`: one run in this process (or one rank under
torchrun), with the same rule for existing output as `orchestrator run|sweep|slurm`: a run folder that
already holds output is refused unless `--resume` is given; with it, a finished run is kept and an
unfinished or failed one continues from its newest valid checkpoint.

SIGTERM and SIGINT (Ctrl-C) stop the run at the next agreed update with a checkpoint there (jobs.stop): the
run is recorded as preempted, and the same command continues it from exactly that update."""
from __future__ import annotations

import argparse
import logging
import signal
import traceback
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from jobs import checkpoint_files as ckpt
from jobs.configdoc import add_print_config, print_config
from jobs.local import LocalContext
from jobs.spec import SpecError, file_problems, load_spec
from jobs.stop import Preempted
from jobs.train import NonFiniteLossError, train_loop
from rundir import EXIT_BAD_INPUT, EXIT_PREEMPTED, State, print_error, print_errors, read_status, run_state


def refuse_existing(run_dir: Path, epochs: int, resume: bool) -> str | None:
    """Why this run may not start now (one line), or None."""
    state = run_state(run_dir, epochs)
    if state.state is State.BLOCKED:
        return f"{run_dir}: {state.describe()}"
    stopped = (read_status(run_dir) or {}).get("state") == "preempted"  # the same command continues it
    if state.started and not resume and not stopped:
        return (f"output already exists in {run_dir} ({state.describe()}); pass --resume to continue, "
                "or set another study/run_id")
    return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs train",
        description="Train one run spec in this process (single process, or one rank under torchrun).",
    )
    parser.add_argument("config", type=Path, help="run spec YAML, e.g. configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3")
    parser.add_argument("--resume", action="store_true",
                        help="continue a run folder that already holds output (finished runs are kept)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="console verbosity; INFO prints a step line every logging.every_steps updates")
    add_print_config(parser)
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        # --print-config shows a config whose dataset or weights are not there yet (it warns instead)
        spec = load_spec(args.config, args.overrides, files=not args.print_config)
    except SpecError as exc:
        return print_errors(f"{args.config} is not a valid run spec", exc.errors)
    if args.print_config:
        return print_config(spec, file_problems(spec))
    refused = refuse_existing(spec.run_dir, spec.train.epochs, args.resume)
    if refused:
        print_error(refused)
        return EXIT_BAD_INPUT
    with LocalContext(spec.run_dir, use_gpu=spec.resources.use_gpu) as ctx:
        try:
            # step lines above the progress bar, not through it
            with ctx.stop.installed(signal.SIGTERM, signal.SIGINT), logging_redirect_tqdm():
                row = train_loop(spec, ctx)
        except Preempted as exc:
            if ctx.rank == 0:
                print(f"stopped {spec.run_dir} ({ctx.stop.signal_name}): {exc}; run the same command to continue",
                      flush=True)
            return EXIT_PREEMPTED
        except (NonFiniteLossError, SpecError, ckpt.CheckpointError) as exc:
            print_error(str(exc))
            return 1
        except Exception:
            traceback.print_exc()
            return 1
    if ctx.rank == 0:
        ema = f", ema top1 {row['ema_top1']:.2f}" if row.get("ema_top1") is not None else ""
        print(f"finished {spec.run_dir}: epoch {row['epoch']}, train loss {row['train_loss']:.4f}, "
              f"top1 {row['top1']:.2f}{ema}")
    return 0
