"""Synthetic 'photos' for the data benchmarks: an ImageNet-layout JPEG tree of realistic sizes.

Each image is 400-500 px wide and 300-500 px high, built from multi-scale smooth colour noise
(large shapes and gradients) plus fine per-pixel texture, saved at JPEG quality 90: ~50-110 KB per
file, close to ImageNet's average (~110 KB at ~400x350). Deterministic given the index.
"""
from __future__ import annotations

from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image


def synth_photo(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    w, h = int(rng.integers(400, 501)), int(rng.integers(300, 501))
    img = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((3, 90.0), (9, 45.0), (27, 25.0), (81, 12.0)):
        grid = rng.normal(0, 1, (cells, cells, 3)).astype(np.float32)
        layer = np.stack([np.asarray(Image.fromarray(grid[..., c]).resize((w, h), Image.Resampling.BICUBIC))
                          for c in range(3)], -1)
        img += amp * layer
    img += rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    img = np.clip(img + 128 + rng.normal(0, 30, 3), 0, 255).astype(np.uint8)
    return Image.fromarray(img)


def _write(args: tuple[int, str]) -> None:
    i, root = args
    path = Path(root) / f"class_{i % 10:02d}" / f"img_{i:06d}.JPEG"
    if not path.exists():
        synth_photo(i).save(path, quality=90)


def make_tree(root: Path, n: int, workers: int = 2) -> Path:
    """Create (or complete) root/class_XX/img_NNNNNN.JPEG for i < n."""
    root = Path(root)
    for c in range(10):
        (root / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
    with Pool(workers) as pool:
        pool.map(_write, [(i, str(root)) for i in range(n)], chunksize=32)
    return root
