"""`python -m jobs train` follows the same --resume rule as the orchestrator's engines: existing output is
refused without --resume (nothing in the folder changes); with it a raised epoch count continues the run."""
from __future__ import annotations

from pathlib import Path

import rundir
from jobs.train_cli import main as train_main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
TINY = ["model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.patch_size=8", "data.num_workers=1",
        "train.batch_size=128", "logging.tensorboard=false"]


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_existing_output_needs_resume_and_resume_continues(demo_data, tmp_path, capsys):
    args = [str(DEMO), f"data_root={demo_data.root}", f"output_root={tmp_path}", "run_id=cli", *TINY]
    assert train_main([*args, "train.epochs=1"]) == 0
    run_dir = tmp_path / "demo" / "cli"
    before = _snapshot(run_dir)
    capsys.readouterr()

    assert train_main([*args, "train.epochs=2"]) == rundir.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output already exists" in err[0] and "--resume" in err[0], err
    assert _snapshot(run_dir) == before

    assert train_main([*args, "train.epochs=2", "--resume"]) == 0
    rows = rundir.read_metrics(run_dir).to_pylist()
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rundir.run_state(run_dir, 2).finished
