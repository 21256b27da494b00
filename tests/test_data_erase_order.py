"""Random-erasing order: `data.erase_order: after_mixup` (timm's prefetcher order) erases the mixed,
normalized batch, keyed by (seed, epoch, rank, batch) so a resumed run erases the same boxes;
`per_image` (ours before) erases each image before mixup."""
from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest
import torch
from timm.data import Mixup

from data.config import DataConfig
from data.loaders import build_train_loader
from jobs import checkpoint_files as ckpt
from jobs.train import Hooks
from rundir import CHECKPOINT_DIR
from tests.tiny import run_local, stable_rows, tiny_spec

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # numba finalizers


def _cfg(demo, **kw) -> DataConfig:
    base = dict(train_path=demo.train_beton, val_path=demo.val_beton, img_size=32, num_workers=1,
                auto_augment=None, hflip=0.0, aug_repeats=1, ra_selected_round=0)
    return DataConfig(**{**base, **kw})


def _zero_boxes(x: torch.Tensor) -> list[tuple[int, int, int, int] | None]:
    """Per image: the bounding box of its exactly-zero pixels (all channels), when they fill it."""
    boxes = []
    for img in x:
        zero = (img == 0).all(0)
        if not zero.any():
            boxes.append(None)
            continue
        ys, xs = torch.nonzero(zero, as_tuple=True)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        boxes.append((y0, y1, x0, x1) if bool(zero[y0:y1, x0:x1].all()) else None)
    return boxes


def test_after_mixup_erases_the_mixed_batch_with_keyed_boxes(demo_data):
    plain = build_train_loader(_cfg(demo_data, reprob=0.0), batch_size=64, seed=3)
    late = build_train_loader(_cfg(demo_data, reprob=1.0, remode="const", erase_order="after_mixup"),
                              batch_size=64, seed=3)
    early = build_train_loader(_cfg(demo_data, reprob=1.0, remode="const"), batch_size=64, seed=3)
    for loader in (plain, late, early):
        loader.set_epoch(1)
    (x_plain, y), = islice(plain, 1)
    (x_late, _), = islice(late, 1)
    (x_early, _), = islice(early, 1)
    assert torch.equal(x_late, x_plain)  # after_mixup: the loader itself no longer erases
    assert all(b is not None for b in _zero_boxes(x_early))  # per_image: every image has its box
    assert torch.equal(early.after_mixup(x_early.clone(), 0), x_early)  # ... and nothing happens later

    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, num_classes=10)
    torch.manual_seed(0)
    mixed, _ = mix(x_plain.clone(), y)
    assert not torch.equal(mixed, x_plain)
    assert all(b is None for b in _zero_boxes(mixed))
    erased = late.after_mixup(mixed.clone(), 0)
    boxes = _zero_boxes(erased)
    assert all(b is not None for b in boxes)  # a constant box on each mixed image ...
    for img, ref, (y0, y1, x0, x1) in zip(erased, mixed, boxes):
        outside = torch.ones(img.shape[1:], dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        assert torch.equal(img[:, outside], ref[:, outside])  # ... and the mixed pixels elsewhere
    # keyed: the same batch number gives the same boxes, another one other boxes; the global
    # generators are left as they were
    state = torch.get_rng_state()
    assert torch.equal(late.after_mixup(mixed.clone(), 0), erased)
    assert _zero_boxes(late.after_mixup(mixed.clone(), 1)) != boxes
    assert torch.equal(torch.get_rng_state(), state)

    noisy = build_train_loader(_cfg(demo_data, reprob=1.0, remode="pixel", erase_order="after_mixup"),
                               batch_size=64, seed=3)
    noisy.set_epoch(1)
    changed = (noisy.after_mixup(mixed.clone(), 0) != mixed).all(1)  # every channel of a pixel
    assert all(bool(c.any()) for c in changed)  # per-pixel noise over part of every mixed image


def _spec(demo_data, out: Path, order: str):
    return tiny_spec(
        demo_data, out, "model.depth=1", "data.reprob=1.0", "data.remode=const", f"data.erase_order={order}",
        "train.epochs=2", "train.batch_size=256", "train.grad_accum=2", "train.mixup=0.8", "train.cutmix=1.0",
        "train.warmup_epochs=0", "checkpoint.every_steps=2", "checkpoint.keep_last=2", run_id="erase",
    )


class _Killed(Exception):
    pass


def test_train_step_erases_after_mixup_and_resumes_exactly(demo_data, tmp_path):
    """The train step's micro-batches (after mixup/cutmix) carry a constant box per image, and a run
    killed mid-epoch resumes to the same metrics as an uninterrupted one."""
    reference = _spec(demo_data, tmp_path / "a", "after_mixup")
    seen: list[list] = []
    run_local(reference, Hooks(after_step=lambda s: seen.append(_zero_boxes(s.images.float()))))
    assert seen and all(b is not None for boxes in seen for b in boxes)

    spec = _spec(demo_data, tmp_path / "b", "after_mixup")

    def kill(state):
        if state.num_updates == 5:  # mid epoch 2: the step checkpoint of update 4 is the resume point
            raise _Killed

    with pytest.raises(_Killed):
        run_local(spec, Hooks(after_step=kill))
    assert ckpt.read_manifest(ckpt.latest_valid(spec.run_dir / CHECKPOINT_DIR))["epoch"] == 1
    run_local(spec)
    assert stable_rows(spec.run_dir) == stable_rows(reference.run_dir)
