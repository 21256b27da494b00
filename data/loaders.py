"""`build_train_loader` / `build_val_loader`: one rank's batches of (normalized images, int64 labels).

A loader = a source (backend: ffcv .beton or torch ImageFolder; decodes + crops, yields uint8 NHWC)
+ a batch augmentation on the target device (data.augment). Sample order comes from data.order and
crop/augmentation randomness from keys (data.rng), so a batch is a function of
(seed, epoch, rank, world_size, batch number) only; `set_epoch(epoch, start_batch)` resumes exactly.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .augment import TrainAugment, ValAugment
from .config import DataConfig
from .holdout import holdout_split, subset_order
from .labels import read_label_map
from .order import train_order, val_order
from .rng import BICUBIC_PROBABILITY, stream_seed

_CROP_TAG = 0x43524F50  # "CROP": separates the crop keys from the batch-augmentation keys
_AUG_TAG = 0x41554721
_ERASE_TAG = 0x45524153  # "ERAS": erasing after mixup, keyed apart from the batch augmentation


class Source(Protocol):
    num_samples: int

    def epoch_batches(self, epoch: int) -> int: ...

    def iterate(self, epoch: int, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def _ffcv_source(cfg: DataConfig, path: Path, make_order: Callable[[int], Callable[[int], np.ndarray]],
                 **kw) -> Source:
    from .ffcv_api import Reader
    from .ffcv_backend import FfcvSource

    if not kw["train"]:
        kw.pop("hflip", None)
    else:
        kw["dct_scaling"] = cfg.dct_scaling
        kw["fast_resize"] = cfg.fast_resize
    kw["crop_decode"] = cfg.crop_decode
    order_fn = make_order(int(Reader(str(path)).num_samples))
    return FfcvSource(path, order_fn=order_fn, os_cache=cfg.os_cache, batches_ahead=cfg.batches_ahead, **kw)


def _torch_source(cfg: DataConfig, path: Path, make_order: Callable[[int], Callable[[int], np.ndarray]],
                  **kw) -> Source:
    from .torch_backend import TorchSource

    return TorchSource(path, make_order=make_order, **kw)


BACKENDS: dict[str, Callable[..., Source]] = {"ffcv": _ffcv_source, "torch": _torch_source}


class ImageLoader:
    """Iterable over one epoch of one rank; call set_epoch before each epoch."""

    def __init__(self, source: Source, augment: Callable[[torch.Tensor, int], torch.Tensor], *, seed: int,
                 rank: int, world_size: int, device: torch.device, batch_size: int):
        self.source, self.augment = source, augment
        self.seed, self.rank, self.world_size, self.device = seed, rank, world_size, device
        self.batch_size = batch_size
        self.epoch, self.start_batch = 0, 0

    @property
    def num_samples(self) -> int:
        """Samples in the whole dataset (all ranks)."""
        return self.source.num_samples

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (reshuffle) and the batch the next iteration starts at (for a resume)."""
        if start_batch < 0 or start_batch > self.source.epoch_batches(epoch):
            raise ValueError(f"start_batch {start_batch} outside 0..{self.source.epoch_batches(epoch)}")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        """Batches this rank yields in a full epoch (also when resuming at start_batch)."""
        return self.source.epoch_batches(self.epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start, self.start_batch = self.start_batch, 0
        for b, (images, labels) in enumerate(self.source.iterate(self.epoch, start), start=start):
            key = stream_seed(_AUG_TAG, self.seed, self.epoch, self.rank, self.world_size, b)
            yield self.augment(images, key), labels.to(self.device, non_blocking=True).reshape(-1)

    def after_mixup(self, images: torch.Tensor, batch: int) -> torch.Tensor:
        """What the augmentation does once the train step has mixed batch number `batch` of the current
        epoch (random erasing with erase_order after_mixup, else nothing). Keyed like the batch itself,
        so a resumed epoch erases the same boxes."""
        fn = getattr(self.augment, "after_mixup", None)
        if fn is None:
            return images
        return fn(images, stream_seed(_ERASE_TAG, self.seed, self.epoch, self.rank, self.world_size, batch))


def _check_path(cfg: DataConfig, path: Path, field: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"data.{field}: {path} does not exist")
    read_label_map(path)  # raises ValueError when the label map is missing or malformed
    if cfg.backend == "ffcv":
        from .config import beton_problem

        problem = beton_problem(path)
        if problem:
            raise ValueError(f"data.{field}: {path} {problem} (convert it again with python -m data convert)")


def build_train_loader(cfg: DataConfig, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                       device: torch.device | str = "cpu") -> ImageLoader:
    device = torch.device(device)
    _check_path(cfg, cfg.train_path, "train_path")

    kept = holdout_split(cfg.train_path, cfg.backend, cfg.holdout)[0] if cfg.holdout else None

    def make_order(n: int) -> Callable[[int], np.ndarray]:
        order_fn = partial(_train_order, n=n if kept is None else len(kept), seed=seed, rank=rank,
                           world_size=world_size, aug_repeats=cfg.aug_repeats, selected_round=cfg.ra_selected_round)
        if kept is not None:
            order_fn = subset_order(order_fn, kept)  # the held-out samples are never trained on
        if len(order_fn(0)) < batch_size:
            raise ValueError(f"batch_size {batch_size} is larger than the {len(order_fn(0))} samples rank {rank} "
                             f"reads per epoch from {cfg.train_path}; lower the batch size")
        return order_fn

    source = BACKENDS[cfg.backend](
        cfg, cfg.train_path, train=True, make_order=make_order, batch_size=batch_size, img_size=cfg.img_size,
        num_workers=cfg.num_workers, device=device, salt=stream_seed(_CROP_TAG, seed),
        scale=cfg.rrc_scale, ratio=cfg.rrc_ratio, hflip=cfg.hflip,
        p_bicubic=BICUBIC_PROBABILITY[cfg.train_interpolation])
    return ImageLoader(source, TrainAugment(cfg, device), seed=seed, rank=rank, world_size=world_size,
                       device=device, batch_size=batch_size)


def build_val_loader(cfg: DataConfig, *, batch_size: int, rank: int = 0, world_size: int = 1,
                     device: torch.device | str = "cpu") -> ImageLoader:
    """The val set, or with `cfg.holdout` the slice of train_path held out of training (val_path unread)."""
    device = torch.device(device)
    if cfg.holdout:
        _check_path(cfg, cfg.train_path, "train_path")
        held = holdout_split(cfg.train_path, cfg.backend, cfg.holdout)[1]
        path = cfg.train_path

        def make_order(n: int) -> Callable[[int], np.ndarray]:
            return subset_order(partial(_val_order, n=len(held), rank=rank, world_size=world_size), held)
    else:
        _check_path(cfg, cfg.val_path, "val_path")
        path = cfg.val_path

        def make_order(n: int) -> Callable[[int], np.ndarray]:
            return partial(_val_order, n=n, rank=rank, world_size=world_size)
    source = BACKENDS[cfg.backend](
        cfg, path, train=False, make_order=make_order,
        batch_size=batch_size, img_size=cfg.img_size,
        num_workers=cfg.num_workers, device=device, crop_pct=cfg.crop_pct,
        p_bicubic=1.0 if cfg.val_interpolation == "bicubic" else 0.0)
    return ImageLoader(source, ValAugment(cfg, device), seed=0, rank=rank, world_size=world_size,
                       device=device, batch_size=batch_size)


def _train_order(epoch: int, *, n: int, seed: int, rank: int, world_size: int, aug_repeats: int,
                 selected_round: int) -> np.ndarray:
    return train_order(n, seed=seed, epoch=epoch, rank=rank, world_size=world_size, aug_repeats=aug_repeats,
                       selected_round=selected_round)


def _val_order(epoch: int, *, n: int, rank: int, world_size: int) -> np.ndarray:
    return val_order(n, rank=rank, world_size=world_size)
