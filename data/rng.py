"""Counter-based randomness: every random draw is a pure function of a 64-bit key.

FFCV's random ops call np.random inside numba threads (per-thread state, scheduling-dependent), so
they cannot reproduce a run. Here the crop of sample `pos` in a batch is drawn from
key = mix(salt, batch's sample indices, pos): the same in any thread, any worker count, either
backend, and after a resume (the batch's indices depend only on seed/epoch/rank/world).
All functions are numba-jitted so FFCV's compiled decoder can inline them; they run from Python too.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, nogil=True)
def mix64(x):
    """splitmix64 finalizer: a bijective avalanche of 64 bits."""
    x = np.uint64(x)
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


@njit(cache=True, nogil=True)
def uniform(key, counter):
    """The counter-th U[0, 1) draw of stream `key` (53-bit mantissa)."""
    return float(mix64(np.uint64(key) + np.uint64(counter + 1) * _GOLDEN) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, nogil=True)
def batch_key(salt, indices):
    """Key of one batch from its sample indices (order matters)."""
    h = mix64(np.uint64(salt))
    for k in range(len(indices)):
        h = mix64(h ^ (np.uint64(indices[k]) + _GOLDEN))
    return h


@njit(cache=True, nogil=True)
def sample_key(bkey, pos):
    return mix64(np.uint64(bkey) ^ (np.uint64(pos + 1) * _GOLDEN))


@njit(cache=True, nogil=True)
def rrc_params(key, height, width, scale_lo, scale_hi, ratio_lo, ratio_hi):
    """torchvision RandomResizedCrop.get_params (10 tries, then the central fallback) on a keyed stream.

    Returns (top, left, h, w).
    """
    area = float(height) * float(width)
    log_lo = np.log(ratio_lo)
    log_hi = np.log(ratio_hi)
    for t in range(10):
        target_area = area * (scale_lo + (scale_hi - scale_lo) * uniform(key, 4 * t))
        aspect = np.exp(log_lo + (log_hi - log_lo) * uniform(key, 4 * t + 1))
        w = int(np.round(np.sqrt(target_area * aspect)))
        h = int(np.round(np.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(uniform(key, 4 * t + 2) * (height - h + 1))
            j = int(uniform(key, 4 * t + 3) * (width - w + 1))
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < ratio_lo:
        w = width
        h = int(np.round(w / ratio_lo))
    elif in_ratio > ratio_hi:
        h = height
        w = int(np.round(h * ratio_hi))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


FLIP_DRAW = 40  # counter of the flip draw: after rrc_params' 4 x 10 draws


@njit(cache=True, nogil=True)
def flip_draw(key, p):
    """True with probability p: whether the sample with this key is flipped horizontally."""
    return uniform(key, FLIP_DRAW) < p


INTERP_DRAW = 41  # counter of the interpolation draw (train_interpolation random)

# train_interpolation -> probability that a sample is resized bicubic (timm's names; `random` is
# timm's choice of bilinear or bicubic per image)
BICUBIC_PROBABILITY = {"bilinear": 0.0, "bicubic": 1.0, "random": 0.5}


@njit(cache=True, nogil=True)
def bicubic_draw(key, p):
    """True with probability p: whether the sample with this key is resized bicubic."""
    return p > 0 and uniform(key, INTERP_DRAW) < p


@njit(cache=True, nogil=True)
def center_crop_params(height, width, crop_pct):
    """Square of side crop_pct * shorter side, centred (FFCV CenterCropRGBImageDecoder's geometry)."""
    c = int(crop_pct * min(height, width))
    return (height - c) // 2, (width - c) // 2, c, c


def stream_seed(*parts: int) -> int:
    """A 63-bit seed (for torch/numpy generators) from integers such as (seed, epoch, rank, batch)."""
    h = np.uint64(0x243F6A8885A308D3)
    for p in parts:
        h = mix64(h ^ (np.uint64(int(p) & 0xFFFFFFFFFFFFFFFF) + _GOLDEN))
    return int(h) >> 1
