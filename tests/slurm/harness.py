"""Test helpers for the Slurm path: the session cluster fixture's body and a tiny study config."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import yaml
from cluster import Cluster, ClusterError, install_packages

TINY_MODEL = {"name": "vit_tiny_patch16_224", "num_classes": 10, "patch_size": 8, "depth": 2, "embed_dim": 32,
              "num_heads": 2, "drop_path_rate": 0.0}
TINY_DATA = {"train_path": "train.beton", "val_path": "val.beton", "backend": "ffcv", "img_size": 32, "num_workers": 1,
             "rrc_scale": [0.35, 1.0], "hflip": 0.0, "auto_augment": None, "reprob": 0.0, "aug_repeats": 1,
             "ra_selected_round": 0, "crop_pct": 1.0}
TINY_TRAIN = {"epochs": 2, "batch_size": 64, "grad_accum": 1, "lr": 2.0e-3, "lr_scale": "none", "warmup_epochs": 1,
              "mixup": 0.0, "cutmix": 0.0, "ema": True, "ema_decay": 0.99, "amp": False}
# Columns that measure the machine, not the training: never compared between engines.
TIMING_COLUMNS = ("train_img_s", "epoch_s", "wall_time", "host")


def session_cluster(skip: Callable[[str], None]) -> Iterator[Cluster]:
    """Install (if needed) and start the private Slurm; skip only when the packages cannot be installed."""
    if os.geteuid() != 0:
        skip("the private Slurm needs root (slurmd runs jobs as their submitter)")
    try:
        install_packages()
    except ClusterError as exc:
        skip(f"Slurm packages cannot be installed: {exc}")
    # A short path: the munge socket path must fit in a unix socket address (108 bytes).
    base = Path(tempfile.mkdtemp(prefix="vitreduce-slurm-"))
    cluster = Cluster(base)
    saved = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ.update(cluster.env())
        yield cluster
    finally:
        cluster.stop()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        shutil.rmtree(base, ignore_errors=True)


def write_config(path: Path, demo_root: Path, output_root: Path, study: str, *, epochs: int = 2,
                 seeds: list[int] | None = None, conditions: dict | None = None, run_id: str | None = None,
                 overrides: dict | None = None) -> Path:
    """A run spec (no seeds/conditions) or a study YAML with the tiny ViT on the shipped digits."""
    cfg: dict = {
        "model": TINY_MODEL, "data_root": str(demo_root), "data": TINY_DATA,
        "train": {**TINY_TRAIN, "epochs": epochs},
        "resources": {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 1, "gpus_per_worker": 0},
        "checkpoint": {"every_epochs": 1, "keep_last": 2}, "seed": 0,
        "output_root": str(output_root), "study": study,
    }
    for section, values in (overrides or {}).items():
        cfg[section] = {**cfg.get(section, {}), **values}
    if run_id:
        cfg["run_id"] = run_id
    if seeds is not None:
        cfg["seeds"] = seeds
    if conditions is not None:
        cfg["conditions"] = conditions
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def status(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_until(what: str, ok: Callable[[], bool], timeout: float, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def job_state(job_id: str) -> str:
    r = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return r.stdout.strip() or "GONE"


def events(run_dir: Path, kind: str) -> list[str]:
    path = Path(run_dir) / "events.log"
    if not path.exists():
        return []
    return [ln for ln in path.read_text().splitlines() if f" {kind}: " in ln]
