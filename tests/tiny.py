"""The tiny demo ViT the training-loop tests train on the shipped digits (CPU), in one place, so each test
file states only how its runs differ and every file compares two runs' metrics the same way."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch

import rundir
from jobs.local import LocalContext
from jobs.loop_state import Hooks
from jobs.spec import RunSpec, load_spec
from jobs.train import train_loop

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
# Two blocks of width 32 on 8 px patches (16 tokens per 32 px digit), one loader worker: seconds an epoch.
TINY = ("model.depth=2", "model.embed_dim=32", "model.num_heads=2", "model.patch_size=8", "data.num_workers=1")
# Timing and provenance differ between runs by nature; every other metrics column must be bitwise equal.
VOLATILE = frozenset({"train_img_s", "epoch_s", "wall_time", "host", "resumed_from"})


def tiny_spec(demo_data, out: Path, *extra: str, run_id: str = "tiny") -> RunSpec:
    """configs/demo.yaml on `demo_data`, written under `out`, shrunk to TINY; `extra` comes last, so it wins."""
    return load_spec(DEMO, [f"data_root={demo_data.root}", f"output_root={out}", f"run_id={run_id}", *TINY, *extra])


def run_local(spec: RunSpec, hooks: Hooks | None = None) -> dict:
    """Train (or resume) `spec` in this process on the CPU; returns the last metrics row."""
    with LocalContext(spec.run_dir, use_gpu=False) as ctx:
        return train_loop(spec, ctx, hooks)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread while the block runs (what a Slurm task with cpus_per_task=1 gets): runs compared
    bit for bit must use the same thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def stable_rows(rows: Path | list[dict], volatile: frozenset[str] = VOLATILE) -> list[dict]:
    """Metrics rows (given, or read from a run folder) without the `volatile` columns."""
    if isinstance(rows, Path):
        rows = rundir.read_metrics(rows).to_pylist()
    return [{k: v for k, v in r.items() if k not in volatile} for r in rows]
