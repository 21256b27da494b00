"""`python -m orchestrator demo`: shipped dataset -> demo study on Ray -> analysis report -> its path.

Idempotent: a second call reuses the dataset and every finished run (the sweep resumes the study),
so an interrupted `make demo` continues where it stopped.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path


def demo(config: Path, overrides: list[str], *, data_dir: Path, address: str | None = None,
         dashboard: bool = True) -> int:
    from data.demo import prepare_demo
    from jobs.spec import SpecError

    from .__main__ import _print_errors, _sweep
    from .cluster import resolve_address
    from .study import ClusterShape, load_study

    t0 = time.time()
    paths = prepare_demo(data_dir)
    print(f"dataset: {paths.train_beton} and {paths.val_beton} ({time.time() - t0:.0f} s)")
    overrides = [f"data_root={Path(paths.root).resolve()}", *overrides]
    embedded = resolve_address(address) is None
    try:
        study = load_study(config, overrides, cluster=ClusterShape.this_machine() if embedded else None)
    except SpecError as exc:
        return _print_errors(f"{config} is not a valid study", exc.errors)
    # A fresh Tune experiment each time; finished runs are skipped by their files, unfinished ones
    # continue from their checkpoints (so a changed epoch count is honoured, unlike a Tune restore).
    print(f"live curves: tensorboard --logdir {study.study_dir.resolve()}  (then open http://localhost:6006)",
          flush=True)
    code = _sweep(study, address, resume=False, embedded=embedded, refuse_existing=False, dashboard=dashboard)
    if code != 0:
        print(f"error: the demo study did not finish (exit {code}); rerun `make demo` to continue it", file=sys.stderr)
        return code

    from analysis.report import build_report

    out = study.study_dir / "report"
    build_report(study.study_dir, out)
    report = (out / "report.md").resolve()
    print(f"demo finished in {time.time() - t0:.0f} s")
    print(f"report: {report}")
    print(f"TensorBoard: tensorboard --logdir {study.study_dir.resolve()}")
    return 0
