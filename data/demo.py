"""The shipped dataset: scikit-learn's bundled 8x8 digits as a 32x32 RGB JPEG ImageNet-layout tree.

1,797 real handwritten digits, 10 classes, no network. Fixed split: every 5th image (in sklearn's
order) is validation -> 1,437 train / 360 val. Both trees are converted by the same `data.convert`
code as ImageNet (JPEG mode, so the JPEG decode path is what the demo and tests exercise).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .convert import ConvertOptions, convert
from .labels import read_label_map

DEMO_VERSION = 1  # bump when the rendering changes, so stale trees are rebuilt
VAL_EVERY = 5
SIDE = 32
# 32 px images: keep every pixel (max_res 32) and store them as JPEG like most of ImageNet
DEMO_OPTIONS = ConvertOptions(max_res=SIDE, write_mode="jpg", jpeg_quality=95, workers=1, chunk_size=256)


@dataclass(frozen=True)
class DemoPaths:
    root: Path
    train_dir: Path
    val_dir: Path
    train_beton: Path
    val_beton: Path
    num_classes: int = 10


def _render(x8: np.ndarray) -> Image.Image:
    """8x8 in 0..16 -> 32x32 RGB; bicubic upsampling keeps the strokes smooth."""
    g = Image.fromarray(np.clip(x8 * (255.0 / 16.0), 0, 255).astype(np.uint8), mode="L")
    return g.resize((SIDE, SIDE), Image.Resampling.BICUBIC).convert("RGB")


def _build_trees(root: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for split in ("train", "val"):
        for c in range(10):
            (root / split / f"digit_{c}").mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        split = "val" if i % VAL_EVERY == 0 else "train"
        path = root / split / f"digit_{label}" / f"{i:04d}.jpg"
        _render(img).save(path, quality=95)


def _quiet(*_: object) -> None:
    """Conversion notes are not shown for the demo; its summary lines are."""


def prepare_demo(out_dir: Path | str, log=print) -> DemoPaths:
    """Build (or reuse) OUT_DIR/{train,val}/ and OUT_DIR/{train,val}.beton; idempotent."""
    root = Path(out_dir)
    paths = DemoPaths(root, root / "train", root / "val", root / "train.beton", root / "val.beton")
    stamp = root / "demo.json"
    expected = {"version": DEMO_VERSION, "images": 1797}
    fresh = not (stamp.exists() and json.loads(stamp.read_text()) == expected)
    if fresh:
        root.mkdir(parents=True, exist_ok=True)
        stamp.unlink(missing_ok=True)
        _build_trees(root)
        tmp = stamp.with_name("demo.json.tmp")
        tmp.write_text(json.dumps(expected) + "\n")
        os.replace(tmp, stamp)
    train = convert(paths.train_dir, paths.train_beton, DEMO_OPTIONS, log=_quiet)
    val = convert(paths.val_dir, paths.val_beton, DEMO_OPTIONS, label_map=read_label_map(paths.train_beton),
                  log=_quiet)
    for r in (train, val):
        if not r.up_to_date:
            log(r.summary())
    return paths
