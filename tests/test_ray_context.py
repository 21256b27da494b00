"""RayContext without a cluster: which checkpoint a restarted worker resumes from, and what reaches Ray."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import ray.train

from jobs import checkpoint_files as ckpt
from orchestrator.ray_engine import POINTER_FILE, RayContext, scalar_metrics


def make_ctx(run_dir: Path) -> RayContext:
    ctx = object.__new__(RayContext)  # the real __init__ needs a Ray Train worker
    ctx.rank, ctx.world_size, ctx.local_rank, ctx.run_dir = 0, 1, 0, run_dir
    return ctx


def pointer(tmp_path: Path, target: Path) -> ray.train.Checkpoint:
    d = tmp_path / f"ptr-{target.name}"
    d.mkdir()
    (d / POINTER_FILE).write_text(json.dumps({"checkpoint": str(target), "epoch": 0}))
    return ray.train.Checkpoint.from_directory(str(d))


def save(dir_: Path, n: int) -> Path:
    return ckpt.save(dir_, n, {"x.pt": {"n": n}}, {"epoch": n}, keep_last=5)


def test_newest_valid_on_disk_wins_over_rays_older_pointer(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    c1, c2 = save(run_dir / "checkpoints", 1), save(run_dir / "checkpoints", 2)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: pointer(tmp_path, c1))
    assert make_ctx(run_dir).latest_checkpoint() == c2  # written, but not yet registered with Ray


def test_rays_pointer_used_when_newer_and_valid(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    save(run_dir / "checkpoints", 1)
    elsewhere = save(tmp_path / "other" / "checkpoints", 3)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: pointer(tmp_path, elsewhere))
    assert make_ctx(run_dir).latest_checkpoint() == elsewhere


def test_corrupt_pointed_checkpoint_falls_back_with_warning(tmp_path, monkeypatch, caplog):
    run_dir = tmp_path / "run"
    c1 = save(run_dir / "checkpoints", 1)
    bad = save(tmp_path / "other" / "checkpoints", 4)
    (bad / "x.pt").write_bytes(b"torn")
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: pointer(tmp_path, bad))
    with caplog.at_level(logging.WARNING):
        assert make_ctx(run_dir).latest_checkpoint() == c1
    assert "unusable" in caplog.text


def test_fresh_run_has_no_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    assert make_ctx(tmp_path / "run").latest_checkpoint() is None


def test_metrics_for_ray_are_plain_scalars():
    torch = pytest.importorskip("torch")
    got = scalar_metrics({"a": torch.tensor(1.5), "b": None, "c": "x", "d": [1, 2], "e": 3})
    assert got == {"a": 1.5, "b": None, "c": "x", "e": 3}
