"""A held-out slice of the training set, for tuning: scored like a val set, never trained on, never val itself.

The slice is a pure function of the file's labels and (fraction, seed): per class, round(fraction * n_class)
samples (at least one, never all) drawn with `seed`. The train loader reads the rest, the val loader reads the
slice (center crop, from train_path). So a trial is scored on images it never saw, and the real val set stays
untouched until the confirm runs.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .rng import stream_seed

_HOLDOUT_TAG = 0x484F4C44  # "HOLD": the slice's draws are keyed apart from every other stream


class HoldoutConfig(BaseModel):
    """Which part of train_path a run holds out and scores on instead of val_path."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fraction: float = Field(gt=0, lt=1, description="Share of each class held out (at least one sample per class).")
    seed: int = Field(0, description="Seed of the draw: the same seed gives the same slice.")


def sample_labels(path: Path | str, backend: str) -> np.ndarray:
    """The label of every sample of a .beton (ffcv) or an ImageNet-layout folder (torch), in sample order."""
    st = Path(path).stat()
    return _labels(str(path), backend, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _labels(path: str, backend: str, _mtime_ns: int) -> np.ndarray:
    if backend == "ffcv":
        from .ffcv_api import Reader

        reader = Reader(path)
        return np.asarray(reader.metadata[f"f{reader.field_names.index('label')}"], dtype=np.int64)
    from .labels import folder_label_map, is_image_file, walk_class

    mapping = folder_label_map(Path(path))
    return np.asarray([i for name, i in mapping.items() for p in walk_class(Path(path), name) if is_image_file(p)],
                      dtype=np.int64)


def split(labels: np.ndarray, holdout: HoldoutConfig) -> tuple[np.ndarray, np.ndarray]:
    """(indices trained on, indices held out), both sorted; class-balanced, deterministic in (labels, holdout)."""
    rng = np.random.default_rng(stream_seed(_HOLDOUT_TAG, holdout.seed))
    held = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        k = min(max(1, round(holdout.fraction * len(members))), len(members) - 1)
        held.append(rng.choice(members, size=k, replace=False) if k > 0 else members[:0])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    mask = np.ones(len(labels), bool)
    mask[held_idx] = False
    return np.flatnonzero(mask).astype(np.int64), held_idx.astype(np.int64)


def holdout_split(path: Path | str, backend: str, holdout: HoldoutConfig) -> tuple[np.ndarray, np.ndarray]:
    return split(sample_labels(path, backend), holdout)


def subset_order(order_fn, indices: np.ndarray):
    """An epoch -> file indices function over `indices` only, from one over positions 0..len(indices)-1."""
    return functools.partial(_mapped, order_fn=order_fn, indices=indices)


def _mapped(epoch: int, *, order_fn, indices: np.ndarray) -> np.ndarray:
    return indices[order_fn(epoch)]
