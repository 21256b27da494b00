"""Run logging inside the real training loop on the shipped digits (CPU): TensorBoard curves of an
uninterrupted run, the same curves after a mid-epoch kill and resume (no step twice, values equal), the
layer_stats file of a grouped run, and `python -m jobs train` printing step lines."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.train import Hooks
from rundir.names import LAYER_STATS_FILE
from tests.tiny import DEMO, run_local, tiny_spec

ROOT = Path(__file__).resolve().parents[1]


class Killed(Exception):
    pass


def small_spec(demo_data, out: Path, *extra: str):
    return tiny_spec(
        demo_data, out, "strategies=[{name: grouped, params: {group_size: 2}}]", "train.epochs=2",
        "train.batch_size=128", "train.warmup_epochs=1", "logging.every_steps=2", "logging.layer_stats=true",
        "logging.progress_bar=false", "checkpoint.every_steps=4", *extra, run_id="logged",
    )


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def reference(demo_data, tmp_path_factory):
    spec = small_spec(demo_data, tmp_path_factory.mktemp("logged"))
    run_local(spec)
    return spec


def test_tensorboard_curves_of_a_run(reference):
    tb = scalars(reference.run_dir)
    rows = pq.read_table(reference.run_dir / "metrics.parquet").to_pylist()
    steps = [s for s, _ in tb["train/loss"]]
    total = max(s for s, _ in tb["epoch/top1"])
    assert steps == list(range(2, total + 1, 2))
    # The epoch curves sit at the update count each epoch ended on, with the metrics row's values.
    assert [v for _, v in tb["epoch/top1"]] == pytest.approx([r["top1"] for r in rows])
    assert [v for _, v in tb["epoch/ema_top1"]] == pytest.approx([r["ema_top1"] for r in rows])
    assert len(tb["epoch/top1"]) == 2 and tb["epoch/top1"][1][0] == total
    assert all(v > 0 for _, v in tb["train/grad_norm"]) and all(v > 0 for _, v in tb["train/img_s"])
    assert all(0 <= v <= 1 for _, v in tb["train/data_wait"])


def test_resumed_run_continues_the_same_curves(reference, demo_data, tmp_path):
    spec = small_spec(demo_data, tmp_path)
    expected = scalars(reference.run_dir)
    total = expected["epoch/top1"][-1][0]
    kill_at = total // 2 + 3  # mid epoch 2 (or late epoch 1), 1-3 updates past a step checkpoint

    def kill(state):
        if state.num_updates == kill_at:
            raise Killed

    with pytest.raises(Killed):
        run_local(spec, Hooks(after_step=kill))
    partial = scalars(spec.run_dir)
    assert max(s for s, _ in partial["train/loss"]) >= kill_at - 1
    run_local(spec)
    got = scalars(spec.run_dir)
    for tag in ("train/loss", "train/lr", "train/grad_norm", "epoch/top1", "epoch/train_loss"):
        assert [s for s, _ in got[tag]] == [s for s, _ in expected[tag]], tag   # no step twice or missing
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in expected[tag]], rel=1e-5), tag
    # layer_stats: the rows the killed attempt wrote after its checkpoint were replaced, not duplicated.
    steps = pq.read_table(spec.run_dir / LAYER_STATS_FILE).column("step").to_pylist()
    ref_steps = pq.read_table(reference.run_dir / LAYER_STATS_FILE).column("step").to_pylist()
    assert steps == ref_steps


def test_layer_stats_of_a_grouped_run(reference):
    table = pq.read_table(reference.run_dir / LAYER_STATS_FILE).to_pylist()
    first = [r for r in table if r["step"] == 2]
    assert sorted((r["part"], r["blocks"], r["shared"]) for r in first) == [
        ("attn", "0", False), ("attn", "1", False), ("mlp", "0,1", True)]
    assert {r["condition"] for r in table} == {"grouped"} and {r["epoch"] for r in table} == {1, 2}


def test_jobs_train_prints_step_lines(demo_data, tmp_path):
    args = [sys.executable, "-m", "jobs", "train", str(DEMO), f"data_root={demo_data.root}", f"output_root={tmp_path}",
            "train.epochs=1", "model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.patch_size=8",
            "data.num_workers=1", "train.batch_size=128", "logging.every_steps=4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # both at once (separate run_ids): each spends most of its time starting up
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for cmd in (args, args[:4] + ["--log-level", "WARNING"] + args[4:] + ["run_id=quiet"])]
    try:
        (_, loud_err), (_, quiet_err) = (proc.communicate(timeout=300) for proc in procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert procs[0].returncode == 0, loud_err
    lines = [ln for ln in loud_err.splitlines() if " step " in ln]
    assert lines and all("epoch 1/1 step " in ln and " loss " in ln and " img/s" in ln and " ETA " in ln
                         for ln in lines)
    assert "step 4/" in lines[0]
    assert procs[1].returncode == 0 and " step " not in quiet_err
    assert list((tmp_path / "demo" / "quiet").glob("events.out.tfevents.*"))


def test_report_gains_the_stability_section(reference, tmp_path):
    from analysis import layer_stats
    from analysis.report import build_report

    rep = build_report(reference.run_dir.parent, tmp_path / "report")
    text = rep.report_md.read_text()
    assert "## Training stability: gradient norms per block" in text and f"![{layer_stats.TITLE}]" in text
    assert rep.files["layer_stats_figure"].exists()
    assert "| grouped | mlp |" in text and "| grouped | attn |" in text


def test_resuming_a_finished_run_adds_no_event_file(reference):
    before = sorted(p.name for p in reference.run_dir.glob("events.out.tfevents.*"))
    run_local(reference)
    assert sorted(p.name for p in reference.run_dir.glob("events.out.tfevents.*")) == before
