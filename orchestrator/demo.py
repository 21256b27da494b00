"""`python -m orchestrator demo`: shipped dataset -> demo study on Ray -> analysis report -> its path.

Idempotent: a second call reuses the dataset and every finished run (the plan resumes the study), so an
interrupted `make demo` continues where it stopped, and a raised epoch count is honoured.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from analysis.report import build_report
from data.demo import prepare_demo
from orchestrator.plan import print_resolved
from orchestrator.ray_run import run_config
from rundir import print_error


def demo(config: Path, overrides: list[str], *, data_dir: Path, address: str | None = None,
         print_config: bool = False, dashboard: bool = True) -> int:
    # --print-config: stdout is the YAML alone (the dataset is still built: the config names its files)
    say = (lambda *a: print(*a, file=sys.stderr)) if print_config else print
    t0 = time.time()
    paths = prepare_demo(data_dir, log=say)
    say(f"dataset: {paths.train_beton} and {paths.val_beton} ({time.time() - t0:.0f} s)")
    overrides = [f"data_root={Path(paths.root).resolve()}", *overrides]
    if print_config:
        return print_resolved(config, overrides, "study")
    code, study_dir = run_config(config, overrides, "study", address=address, resume=True, dashboard=dashboard)
    if code != 0 or study_dir is None:
        print_error(f"the demo study did not finish (exit {code}); rerun `make demo` to continue it")
        return code or 1
    out = study_dir / "report"
    build_report(study_dir, out)
    report = (out / "report.md").resolve()
    print(f"demo finished in {time.time() - t0:.0f} s")
    print(f"report: {report}")
    print(f"TensorBoard: tensorboard --logdir {study_dir.resolve()}  (then open http://localhost:6006)")
    return 0
