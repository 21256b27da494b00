"""Reading a large study's state: `python -m analysis status` and the planning of a `--resume`.

    python bench/record.py -- python bench/study_status.py                  # N = 500 runs x 10 epochs
    python bench/study_status.py --runs 50 --epochs 5                       # smoke test

A study of N finished runs (5 conditions x N/5 seeds) is fabricated with rundir's own writers (one
`append_row` per epoch, `write_status`, the recorded run spec spec.json, the study index), then timed:
- `status_cli_s`: `python -m analysis status STUDY` as a user runs it (process start and imports included);
- `run_state_all_s`: rundir.run_state for every run (what `--resume` plans from, after a driver kill): a
  finished run is known from status.json and the metrics file's footer;
- `full_read_all_s`: the same runs classified by reading every metrics file whole (the cost before the footer
  path, and still the path for unfinished runs).
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rundir import (  # noqa: E402
    METRICS_COLUMNS,
    append_row,
    check_status,
    run_state,
    write_index,
    write_spec_record,
    write_status,
)
from rundir.metrics import check_metrics  # noqa: E402

CONDITIONS = ("baseline", "grouped", "shallow", "thin", "multiplexed")


def fabricate(study_dir: Path, runs: int, epochs: int) -> list[str]:
    ids = []
    per = max(1, runs // len(CONDITIONS))
    for cond in CONDITIONS:
        for seed in range(per):
            run_id = f"{cond}-s{seed}"
            d = study_dir / run_id
            d.mkdir(parents=True)
            write_spec_record(d, {"run_id": run_id, "study": study_dir.name, "condition": cond, "seed": seed,
                                  "model": {"name": "vit_base_patch16_224"}, "train": {"epochs": epochs}},
                              {"depth": 12, "embed_dim": 768, "num_heads": 12, "mlp_hidden": 3072})
            for epoch in range(1, epochs + 1):
                row = {c: None for c in METRICS_COLUMNS}
                row.update(study=study_dir.name, run_id=run_id, condition=cond, strategy=cond, strategy_params="[]",
                           ablation="{}", model="vit_base_patch16_224", seed=seed, epoch=epoch, epochs_total=epochs,
                           lr=1e-3, train_loss=5.0 / epoch, top1=50 + epoch * 0.1 + seed * 0.01, top5=80.0,
                           params=86_000_000, epoch_s=600.0, wall_time=time.time(), host="bench")
                append_row(d, row)
            write_status(d, "finished", epochs, epochs)
            ids.append(run_id)
    write_index(study_dir, {r: {"condition": r.rsplit("-s", 1)[0]} for r in ids})
    return ids


def status_problem(returncode: int, stdout: str, stderr: str, runs: int) -> str | None:
    """Why the output of `analysis status` on the fabricated study is wrong, or None. Every fabricated run is
    finished: a status that lists fewer, or calls any of them otherwise, is broken."""
    if returncode != 0 or f"\n{runs} runs: {runs} finished\n" not in f"\n{stdout}\n":
        return f"analysis status failed ({returncode}): {stdout[-1000:]} {stderr[-2000:]}"
    return None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args(argv)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
              "cpus": len(os.sched_getaffinity(0)), "runs": args.runs, "epochs": args.epochs}
    with tempfile.TemporaryDirectory(prefix="study-status-") as d:
        study_dir = Path(d) / "big"
        t0 = time.perf_counter()
        ids = fabricate(study_dir, args.runs, args.epochs)
        result["fabricate_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "analysis", "status", str(study_dir)], cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
        result["status_cli_s"] = round(time.perf_counter() - t0, 2)
        problem = status_problem(proc.returncode, proc.stdout, proc.stderr, len(ids))
        if problem:
            raise SystemExit(problem)
        t0 = time.perf_counter()
        states = [run_state(study_dir / r, args.epochs) for r in ids]
        result["run_state_all_s"] = round(time.perf_counter() - t0, 3)
        if not all(s.finished for s in states):
            raise SystemExit(f"rundir.run_state: {sum(not s.finished for s in states)} finished runs not seen as finished")
        t0 = time.perf_counter()
        for r in ids:
            check_status(study_dir / r)
            check_metrics(study_dir / r)
        result["full_read_all_s"] = round(time.perf_counter() - t0, 3)
    result["figures"] = {k: result[k] for k in ("status_cli_s", "run_state_all_s", "full_read_all_s")}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
