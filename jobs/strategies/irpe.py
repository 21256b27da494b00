"""iRPE (image relative position encoding, Wu et al. 2021) on keys, as Mini-DeiT builds it.

Mini-DeiT (microsoft/Cream `MiniViT/Mini-DeiT/mini_deit_models.py`) asks upstream's `irpe.py` for
`get_rpe_config(ratio=1.9, method="product", mode="ctx", shared_head=True, skip=0, rpe_on="k")`:

- piecewise index (Eq. 18 of the iRPE paper): a row or column offset x keeps its value while
  |x| <= alpha, beyond it grows with log|x| and stops at beta; alpha, beta, gamma = 1, 2, 8 x ratio;
- product method: one bucket per (row bucket, column bucket) pair, (2 int(beta) + 1)^2 buckets
  (49 at ratio 1.9); prefix tokens (class, register) would share one extra bucket (upstream's `skip`);
- contextual mode on keys: the attention logit of query i and key j gains q_i . r_{b(i,j)}, with q
  the already scaled query and r a learned (head_dim,) vector per bucket; no encoding on values;
- one table for all heads, initialised to zero (the model starts as if there were no encoding).

`KeyRelativePosition(q)` returns that (B, H, N, N) term; the multiplexed attention adds it to the
logits before its head mix. Upstream gathers from a per-query `q @ table` product the same way
(its CUDA `rpe_ops` kernel is only a faster version of this gather).
"""
from __future__ import annotations

import math

import torch
from torch import nn

RATIO = 1.9  # Mini-DeiT's


def piecewise_index(relative: torch.Tensor, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """Upstream's `piecewise_index` for integer offsets: the bucket offset in [-int(beta), int(beta)]."""
    far = relative.abs() > alpha
    # float32 like upstream (a long offset divided by a Python float), so every rounding matches
    magnitude = alpha + torch.log(relative.abs().clamp(min=1) / alpha) / math.log(gamma / alpha) * (beta - alpha)
    # round, cap at beta (a float), then truncate to an integer: upstream's order of operations
    outer = (torch.sign(relative) * magnitude.round().clip(max=beta)).long()
    return torch.where(far, outer, relative.long())


def product_buckets(height: int, width: int, ratio: float = RATIO, num_prefix_tokens: int = 0) -> tuple[torch.Tensor, int]:
    """(bucket id of every (query, key) token pair, (P + L, P + L) long on the CPU; number of buckets).

    Tokens are the P prefix tokens followed by the height x width grid in row-major order."""
    alpha, beta, gamma = ratio, 2 * ratio, 8 * ratio
    side = 2 * int(beta) + 1
    # on the CPU even inside `with torch.device("meta")`: the ids are data, computed once
    rows = torch.arange(height, device="cpu").repeat_interleave(width)
    cols = torch.arange(width, device="cpu").repeat(height)
    r = piecewise_index(rows[:, None] - rows[None, :], alpha, beta, gamma) + int(beta)
    c = piecewise_index(cols[:, None] - cols[None, :], alpha, beta, gamma) + int(beta)
    ids, num_buckets = r * side + c, side * side
    if num_prefix_tokens:
        # upstream's `skip`: every pair involving a prefix token reads one extra bucket
        full = torch.full((num_prefix_tokens + ids.shape[0],) * 2, num_buckets, dtype=torch.long, device="cpu")
        full[num_prefix_tokens:, num_prefix_tokens:] = ids
        ids, num_buckets = full, num_buckets + 1
    return ids, num_buckets


class KeyRelativePosition(nn.Module):
    """Contextual product iRPE on keys: `forward(q)[b, h, i, j] = q[b, h, i] . table[:, b(i, j)]`.

    `lookup_table_weight` has upstream's shape (heads, head_dim, buckets), heads = 1 when shared."""

    def __init__(self, head_dim: int, grid: tuple[int, int], num_prefix_tokens: int = 0, ratio: float = RATIO,
                 num_heads: int = 1, device=None):
        super().__init__()
        self.grid, self.num_prefix_tokens, self.ratio = tuple(grid), num_prefix_tokens, ratio
        ids, self.num_buckets = product_buckets(*self.grid, ratio=ratio, num_prefix_tokens=num_prefix_tokens)
        # derived from the grid, so not saved in checkpoints
        self.register_buffer("bucket_ids", ids if device is None else ids.to(device), persistent=False)
        self.lookup_table_weight = nn.Parameter(torch.zeros(num_heads, head_dim, self.num_buckets, device=device))

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        B, H, N, _ = q.shape
        if N != self.bucket_ids.shape[0]:
            h, w = self.grid
            raise ValueError(f"rpe=contextual was built for {self.num_prefix_tokens} prefix token(s) and a {h}x{w} "
                             f"token grid, got {N} tokens")
        per_bucket = q @ self.lookup_table_weight  # (B, H, N, buckets): q_i . r_b for every bucket b
        return per_bucket.gather(-1, self.bucket_ids.expand(B, H, N, N))

    def extra_repr(self) -> str:
        return (f"grid={self.grid}, num_prefix_tokens={self.num_prefix_tokens}, ratio={self.ratio}, "
                f"num_buckets={self.num_buckets}")
