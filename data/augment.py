"""Batch-tensor augmentation after decoding (crop + flip happen in the source, keyed per sample):
RandAugment -> normalize -> random erasing (here, or after the train step's mixup: `erase_order`).

Runs on the loader's device (GPU when training on GPU). Every random choice of a batch comes from
a generator seeded with the batch's key (seed, epoch, rank, world, batch number), so the stream
of augmented batches is reproducible and a resumed epoch sees the same augmentations.
"""
from __future__ import annotations

import random
import sys
import threading

import numpy as np
import torch
from numba import njit
from timm.data.random_erasing import RandomErasing

from .config import DataConfig
from .randaug import BatchRandAugment, parse_rand_augment

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class Normalize:
    def __init__(self, cfg: DataConfig, device: torch.device):
        self.mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(cfg.std, device=device).view(1, 3, 1, 1) * 255)
        self.dtype = _DTYPES[cfg.dtype]
        # (x - mean) * inv_std as x * scale + shift, for the fused CPU conversion
        self.scale = (1 / (np.asarray(cfg.std, np.float64) * 255)).astype(np.float32)
        self.shift = (-np.asarray(cfg.mean, np.float64) / np.asarray(cfg.std, np.float64)).astype(np.float32)
        self.fused_cpu = device.type == "cpu"

    def from_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC batch -> normalized float NCHW (one fused pass on CPU)."""
        if self.fused_cpu and images.device.type == "cpu":
            return cpu_float_nchw(images.contiguous(), self.scale, self.shift)
        return self(to_float_nchw(images, self.mean.device))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """float NCHW 0..255 (contiguous, owned) -> normalized, in place."""
        return x.sub_(self.mean).mul_(self.inv_std)


@njit(cache=True, nogil=True)
def _nhwc_u8_to_nchw_f32(src, scale, shift, out):
    """out[n, c, y, x] = src[n, y, x, c] * scale[c] + shift[c], one pass, on the calling thread."""
    n, h, w, ch = src.shape
    # channel-outer order: contiguous writes (a third cheaper than pixel-outer on the benchmark)
    for i in range(n):
        for c in range(ch):
            s, b = scale[c], shift[c]
            for y in range(h):
                for x in range(w):
                    out[i, c, y, x] = np.float32(src[i, y, x, c]) * s + b


def cpu_float_nchw(images: torch.Tensor, scale: np.ndarray, shift: np.ndarray) -> torch.Tensor:
    """CPU path of to_float_nchw (+ optional affine normalisation) without torch's OpenMP threads:
    their spin-waiting after every op took the cores the ffcv decode threads need."""
    n, h, w, c = images.shape
    out = _POOL.get((n, c, h, w))
    _nhwc_u8_to_nchw_f32(images.numpy(), scale, shift, out)
    return torch.from_numpy(out)


class _BufferPool:
    """Recycles float32 batch arrays once nothing references them any more.

    A fresh 77 MB batch array is mmap'ed by malloc and page-faulted (kernel-zeroed) on first write:
    that cost 3x the conversion itself (0.3 vs 0.1 ms per 224 px image). A tensor made by
    torch.from_numpy keeps its array alive, so an array whose only references are the pool's is free
    to reuse: batches the caller still holds (or views of them) are never overwritten.
    """

    def __init__(self, per_shape: int = 4):
        self.per_shape = per_shape
        self.arrays: dict[tuple[int, ...], list[np.ndarray]] = {}
        self.lock = threading.Lock()

    def get(self, shape: tuple[int, ...]) -> np.ndarray:
        with self.lock:
            arrays = self.arrays.setdefault(shape, [])
            for k in range(len(arrays)):
                # references: the list, and getrefcount's argument
                if sys.getrefcount(arrays[k]) == 2:
                    return arrays[k]
            out = np.empty(shape, np.float32)
            if len(arrays) < self.per_shape:
                arrays.append(out)
            return out


_POOL = _BufferPool()


_IDENTITY = (np.ones(3, np.float32), np.zeros(3, np.float32))


def to_float_nchw(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Source batch (uint8 NHWC, possibly the source's reused buffer) -> new contiguous float NCHW
    tensor on device, in one pass (after a uint8 host->device copy when needed)."""
    if device.type == "cpu" and images.device.type == "cpu" and images.dtype == torch.uint8:
        return cpu_float_nchw(images.contiguous(), *_IDENTITY)
    images = images.to(device, non_blocking=True)
    n, h, w, c = images.shape
    out = torch.empty((n, c, h, w), dtype=torch.float32, device=device)
    out.copy_(images.permute(0, 3, 1, 2))
    return out


class TrainAugment:
    def __init__(self, cfg: DataConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.norm = Normalize(cfg, device)
        img_mean = tuple(min(255, round(255 * m)) for m in cfg.mean)
        self.randaug = BatchRandAugment(parse_rand_augment(cfg.auto_augment, img_mean)) if cfg.auto_augment else None
        self.erase = RandomErasing(cfg.reprob, mode=cfg.remode, max_count=cfg.recount, device=str(device)) \
            if cfg.reprob > 0 else None

    def __call__(self, images: torch.Tensor, key: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(key)
        if self.randaug is not None:
            x = self.norm(self.randaug(to_float_nchw(images, self.device), gen))
        else:
            x = self.norm.from_uint8(images)
        if self.erase is not None and self.cfg.erase_order == "per_image":
            x = self._erase(x, int(torch.randint(2**62, (1,), generator=gen)))
        return x.to(self.norm.dtype)

    def after_mixup(self, x: torch.Tensor, key: int) -> torch.Tensor:
        """Random erasing of the mixed batch (erase_order after_mixup; identity otherwise), in place."""
        if self.erase is None or self.cfg.erase_order != "after_mixup":
            return x
        return self._erase(x, key)

    def _erase(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        # timm's RandomErasing draws from the global `random` and the device's default torch
        # generator; run it on private, seeded copies of both so training code is unaffected.
        state = random.getstate()
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            random.seed(seed)
            torch.random.default_generator.manual_seed(seed)
            if devices:
                torch.cuda.manual_seed(seed)
            try:
                return self.erase(x)
            finally:
                random.setstate(state)


class ValAugment:
    def __init__(self, cfg: DataConfig, device: torch.device):
        self.device = device
        self.norm = Normalize(cfg, device)

    def __call__(self, images: torch.Tensor, key: int) -> torch.Tensor:
        return self.norm.from_uint8(images).to(self.norm.dtype)
