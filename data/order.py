"""Which samples each rank reads, in which order: shuffled+sharded train (with DeiT repeated
augmentation), exact-once sharded val. Pure functions of (n, seed, epoch, rank, world)."""
from __future__ import annotations

import math

import numpy as np

from .rng import stream_seed


def train_order(n: int, *, seed: int, epoch: int, rank: int, world_size: int, aug_repeats: int = 1,
                selected_round: int = 256) -> np.ndarray:
    """Sample indices of one epoch for one rank.

    aug_repeats == 1: torch DistributedSampler (shuffle, pad to a multiple of world_size).
    aug_repeats > 1: DeiT RASampler: each sample of a shuffled permutation is repeated aug_repeats
    times in a row, the padded list is dealt round-robin to the ranks (so the copies of a sample land
    on different ranks), and each rank keeps floor(n / round) * round / world of them, so an epoch
    has about n samples in total, as without repetition. When n < selected_round, all n are kept.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    perm = np.random.default_rng(stream_seed(seed, epoch)).permutation(n)
    if aug_repeats <= 1:
        per_rank = math.ceil(n / world_size)
        total = per_rank * world_size
        idx = np.concatenate([perm, perm[: total - n]]) if total > n else perm
        return idx[rank:total:world_size].astype(np.int64)
    per_rank = math.ceil(n * aug_repeats / world_size)
    total = per_rank * world_size
    idx = np.repeat(perm, aug_repeats)
    idx = np.concatenate([idx, idx[: total - len(idx)]])
    mine = idx[rank:total:world_size]
    if selected_round and n >= selected_round:
        keep = n // selected_round * selected_round // world_size
    else:
        keep = math.ceil(n / world_size)
    return mine[:keep].astype(np.int64)


def val_order(n: int, *, rank: int, world_size: int) -> np.ndarray:
    """Every sample exactly once across ranks, no padding (ranks may differ by one sample)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    return np.arange(rank, n, world_size, dtype=np.int64)
