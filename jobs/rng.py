"""The global random generators a run trains from: seeding, saving, restoring, and keeping loaders off them.

Everything random that shapes training (model init, drop-path, mixup) draws from the global python,
numpy and torch generators. Loaders draw only from (seed, epoch, rank, world_size), and every loader
call runs inside `rng_isolated`, so a loader (or its worker processes' base seed) never shifts the
training stream: saving `rng_state()` in a checkpoint is then enough to replay the stream exactly.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Iterable, Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def rng_isolated(device: torch.device) -> Iterator[None]:
    """Run loader code without moving the training stream of the global generators."""
    saved = rng_state(device)
    try:
        yield
    finally:
        set_rng_state(saved, device)


def isolated_batches(loader: Iterable, device: torch.device) -> Iterator[Any]:
    """The loader's batches, each fetched with the global generators saved and restored around it."""
    with rng_isolated(device):
        it = iter(loader)
    while True:
        with rng_isolated(device):
            try:
                batch = next(it)
            except StopIteration:
                return
        yield batch
