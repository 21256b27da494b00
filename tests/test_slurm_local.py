"""The Slurm path without a Slurm: --local (submitit LocalExecutor) end to end, and option checking."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from harness import status, write_config  # noqa: E402

from orchestrator import slurm, slurm_status  # noqa: E402
from orchestrator import slurm_options as so  # noqa: E402
from orchestrator import slurm_queue as sq  # noqa: E402
from orchestrator.plan import load_config  # noqa: E402


def load_runs(config, overrides):
    """(runs with resolved paths, study dir) of a config, as `slurm` plans them."""
    _, runs, _ = load_config(config, overrides)
    return runs, runs[0].run_dir.parent


def test_local_mode_end_to_end(demo_data, tmp_path, capsys):
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "run.yaml", demo_data.root, out, "loc", run_id="r0")
    assert slurm.main([str(cfg), "--local", "--time", "10"]) == 0, capsys.readouterr()
    text = capsys.readouterr().out
    assert "r0: finished (2/2 epochs)" in text, text
    run_dir = out / "loc" / "r0"
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["resumed_from"] is None for r in rows)
    assert status(run_dir)["state"] == "finished"
    record = json.loads((out / "loc" / sq.JOBS_FILE).read_text())
    assert record["executor"] == "local" and list(record["runs"]) == ["r0"]
    assert (run_dir / "spec.yaml").exists() and any((run_dir / "checkpoints").glob("ckpt-*"))

    assert slurm_status.status_main([str(out / "loc")]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("r0"))
    assert "COMPLETED" in line and "finished" in line and "2/2" in line, line

    # Submitting the same study again without --resume is refused; with --resume nothing is left to do.
    assert slurm.main([str(cfg), "--local"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert slurm.main([str(cfg), "--local", "--resume"]) == 0
    assert "nothing to submit" in capsys.readouterr().out


def test_without_sbatch_suggests_local(demo_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    cfg = write_config(tmp_path / "run.yaml", demo_data.root, tmp_path / "runs", "nos", run_id="r0")
    assert slurm.main([str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "sbatch not found" in err and "--local" in err, err
    assert not (tmp_path / "runs" / "nos" / sq.JOBS_FILE).exists()


def test_bad_options_reported_together(demo_data, tmp_path, capsys):
    cfg = write_config(tmp_path / "run.yaml", demo_data.root, tmp_path / "runs", "opt", run_id="r0")
    rc = slurm.main([str(cfg), "--local", "--time", "soon", "--nodes", "2", "--sbatch", "exclusive",
                     "train.epochs=-1"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2
    assert any("--time 'soon'" in ln for ln in err), err
    assert any("--nodes 2" in ln for ln in err), err
    assert any("--sbatch 'exclusive'" in ln for ln in err), err
    assert any("train.epochs" in ln for ln in err), err


@pytest.mark.parametrize("text,minutes", [("30", 30), ("1:30", 2), ("48:00:00", 2880), ("2-00", 2880),
                                          ("1-12:30", 2190), ("0-0:0:59", 1)])
def test_parse_time(text, minutes):
    assert so.parse_time(text) == minutes


def test_time_limit_without_time_to_train_warns():
    # Any later USR2 loses nothing (the job checkpoints where it stops): only a limit that leaves no time is flagged.
    assert "before it trains at all" in so.time_warnings(so.SlurmOptions(time_min=1))[0]
    assert so.time_warnings(so.SlurmOptions(time_min=5, signal_delay_s=60)) == []


def test_layout_gpu_and_cpu(demo_data, tmp_path):
    cfg = write_config(tmp_path / "run.yaml", demo_data.root, tmp_path / "runs", "lay", run_id="r0")
    runs, _ = load_runs(cfg, ["resources.num_workers=4"])
    cpu = so.layout(runs[0], so.SlurmOptions(nodes=2))
    assert (cpu.nodes, cpu.tasks_per_node, cpu.gpus_per_node, cpu.world_size) == (2, 2, 0, 4)
    gpu_runs, _ = load_runs(cfg, ["resources.use_gpu=true", "resources.num_workers=8"])
    gpu = so.layout(gpu_runs[0], so.SlurmOptions(nodes=2, gpus_per_node=4))
    assert (gpu.nodes, gpu.tasks_per_node, gpu.gpus_per_node, gpu.world_size) == (2, 4, 4, 8)
    with pytest.raises(so.SlurmError, match="does not split over --nodes 3"):
        so.layout(runs[0], so.SlurmOptions(nodes=3))
    with pytest.raises(so.SlurmError, match="use_gpu is false"):
        so.layout(runs[0], so.SlurmOptions(gpus_per_node=2))


def test_a_job_out_of_the_queue_is_never_shown_live():
    """Accounting lags the queue: a job squeue no longer lists is not RUNNING, whatever sacct says yet."""
    files = {"1": "FAILED", "2": "UNKNOWN"}.get
    merged = sq.merge_states(["1", "2", "3", "4"], queued={"3": "PENDING"},
                             accounted={"1": "RUNNING", "2": "RUNNING", "3": "RUNNING", "4": "COMPLETED"},
                             from_files=lambda job: files(job, "UNKNOWN"))
    assert merged == {"1": "FAILED", "2": sq.ENDED, "3": "PENDING", "4": "COMPLETED"}
    assert not {merged["1"], merged["2"]} & sq.LIVE_STATES
    # without the queue (squeue failed), accounting is all there is
    assert sq.merge_states(["1"], None, {"1": "RUNNING"}, lambda job: "UNKNOWN") == {"1": "RUNNING"}


def test_local_resume_continues_a_run_whose_epochs_were_raised(demo_data, tmp_path, capsys):
    """The raised-epochs rule on the Slurm engine end to end: a finished 2-epoch run asked for 3 continues from
    its epoch-2 checkpoint (one more epoch, nothing recomputed)."""
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "run.yaml", demo_data.root, out, "up", run_id="r0")
    assert slurm.main([str(cfg), "--local", "--time", "10"]) == 0
    capsys.readouterr()
    assert slurm.main([str(cfg), "--local", "--time", "10", "--resume", "train.epochs=3"]) == 0
    text = capsys.readouterr().out
    assert "r0: continues from its checkpoints (unfinished (2/3 epochs))" in text, text
    assert "r0: finished (3/3 epochs)" in text, text
    rows = pq.read_table(out / "up" / "r0" / "metrics.parquet").to_pylist()
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["resumed_from"] for r in rows] == [None, None, 2]
