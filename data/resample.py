"""Bicubic resize of a crop with PIL's arithmetic (what timm's `bicubic`/`random` train interpolation
runs on PIL images): separable convolution with the Keys cubic (a = -0.5), its support widened by the
scale factor when shrinking (antialiasing), weights normalised per output pixel, rounded to uint8.

Used by both loader backends for the samples data.rng.bicubic_draw selects, on the decoded crop box,
so they give the same pixels for the same crop.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _cubic(x):
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


@njit(cache=True, nogil=True)
def _weights(in_size, out_size):
    """PIL's precompute_coeffs: for each output pixel the first input pixel, the tap count and the
    normalised weights (taps padded to the widest)."""
    scale = in_size / out_size
    fscale = max(scale, 1.0)
    support = 2.0 * fscale
    taps = int(np.ceil(support)) * 2 + 1
    first = np.empty(out_size, np.int64)
    count = np.empty(out_size, np.int64)
    w = np.zeros((out_size, taps), np.float64)
    for x in range(out_size):
        center = (x + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        total = 0.0
        for k in range(xmax):
            v = _cubic((k + xmin - center + 0.5) / fscale)
            w[x, k] = v
            total += v
        if total != 0.0:
            for k in range(xmax):
                w[x, k] /= total
        first[x] = xmin
        count[x] = xmax
    return first, count, w


@njit(cache=True, nogil=True)
def bicubic_resize(src, i, j, h, w, dst):
    """Resize src[i:i+h, j:j+w] (H, W, 3 uint8) into dst (oh, ow, 3 uint8), horizontal pass first
    (as PIL), each pass rounded and clipped to uint8 (as PIL's 8-bit path). Returns 0.

    Loop order for speed: the horizontal pass keeps the three channels in registers; the vertical
    pass adds whole weighted rows (contiguous, vectorised)."""
    oh, ow = dst.shape[0], dst.shape[1]
    fx, cx, wx = _weights(w, ow)
    fy, cy, wy = _weights(h, oh)
    r0 = fy[0]
    r1 = fy[oh - 1] + cy[oh - 1]  # rows of the box the vertical pass reads
    tmp = np.empty((r1 - r0, ow * 3), np.float64)
    for r in range(r0, r1):
        row = src[i + r]
        for x in range(ow):
            a0 = 0.0
            a1 = 0.0
            a2 = 0.0
            base = j + fx[x]
            for k in range(cx[x]):
                t = wx[x, k]
                a0 += t * row[base + k, 0]
                a1 += t * row[base + k, 1]
                a2 += t * row[base + k, 2]
            tmp[r - r0, 3 * x] = min(max(np.floor(a0 + 0.5), 0.0), 255.0)
            tmp[r - r0, 3 * x + 1] = min(max(np.floor(a1 + 0.5), 0.0), 255.0)
            tmp[r - r0, 3 * x + 2] = min(max(np.floor(a2 + 0.5), 0.0), 255.0)
    acc = np.empty(ow * 3, np.float64)
    flat = dst.reshape(oh, ow * 3)
    for y in range(oh):
        acc[:] = 0.0
        for k in range(cy[y]):
            t = wy[y, k]
            src_row = tmp[fy[y] + k - r0]
            for q in range(ow * 3):
                acc[q] += t * src_row[q]
        for q in range(ow * 3):
            flat[y, q] = np.uint8(min(max(np.floor(acc[q] + 0.5), 0.0), 255.0))
    return 0
