"""Region decoding of JPEGs (data/jpegcrop.c) for the FFCV train decoder, callable from numba.

The C shim is compiled against the system libjpeg-turbo (libjpeg62-turbo-dev, installed by `make
sysdeps`) on first use into a per-user cache keyed by the source's hash, so concurrent workers and
source edits are safe. When it cannot be built (no compiler or headers), `load()` returns None with
the reason in `build_error()` and the decoder keeps its full-decode path.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import warnings
from ctypes import c_uint32, c_uint64, c_void_p
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("jpegcrop.c")
# return codes of crop_decode
OK, MULTI_SCAN, NO_FIT = 0, 1, 2

_lib: ctypes.CDLL | None = None
_error: str | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitreduce"


def build(out: Path | None = None) -> Path:
    """Compile the shim (if not already built for this source) and return the .so path.

    Raises RuntimeError with the compiler's message when it fails."""
    src = SOURCE.read_bytes()
    out = out or cache_dir() / f"jpegcrop-{hashlib.sha256(src).hexdigest()[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cc, "-O3", "-shared", "-fPIC", str(SOURCE), "-o", tmp, "-ljpeg"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:  # no compiler at all
        os.unlink(tmp)
        raise RuntimeError(f"cannot build {SOURCE.name}: {e}; install a C compiler and libjpeg62-turbo-dev") from e
    if res.returncode != 0:
        os.unlink(tmp)
        first = (res.stderr.strip().splitlines() or ["?"])[0]
        raise RuntimeError(f"cannot build {SOURCE.name} ({' '.join(cmd)}): {first}; "
                           "install libjpeg62-turbo-dev (make sysdeps)")
    os.replace(tmp, out)  # atomic: a concurrent builder's result is identical
    return out


def load() -> ctypes.CDLL | None:
    """The loaded shim, building it on first use; None (with one warning) when that is impossible."""
    global _lib, _error
    if _lib is None and _error is None:
        try:
            _lib = ctypes.CDLL(str(build()))
            fn = _lib.crop_decode
            fn.argtypes = [c_void_p, c_uint64, c_void_p, c_uint64, c_uint32, c_uint32, c_uint32, c_uint32,
                           c_uint32, c_uint32, c_void_p]
            fn.restype = ctypes.c_int
            rs = _lib.bilinear_resize
            rs.argtypes = [c_void_p, c_uint32, c_uint32, c_uint32, c_uint32, c_uint32, c_void_p, c_uint32, c_uint32]
            rs.restype = ctypes.c_int
        except (RuntimeError, OSError) as e:
            _lib, _error = None, str(e)
            warnings.warn(f"crop_decode disabled, decoding whole JPEGs: {e}", RuntimeWarning, stacklevel=2)
    return _lib


def build_error() -> str | None:
    return _error


def numba_fns():
    """numba-callable `(crop_decode(src, dst, stride, denom, top, left, h, w, info) -> int,
    bilinear(src, top, left, h, w, dst) -> int)` (src/dst (H, W, 3) uint8 with contiguous rows), or
    None when the shim is unavailable."""
    lib = load()
    if lib is None:
        return None
    from numba import njit

    c_decode, c_resize = lib.crop_decode, lib.bilinear_resize

    @njit(nogil=True)
    def crop_decode(src, dst, stride, denom, top, left, h, w, info):
        return c_decode(src.ctypes.data, src.size, dst.ctypes.data, dst.size, stride, denom, top, left, h, w,
                        info.ctypes.data)

    @njit(nogil=True)
    def bilinear(src, top, left, h, w, dst):
        return c_resize(src.ctypes.data, src.strides[0], top, left, h, w, dst.ctypes.data, dst.shape[0],
                        dst.shape[1])
    return crop_decode, bilinear


def decode_region(jpeg: np.ndarray, denom: int, top: int, left: int, h: int, w: int) -> np.ndarray | None:
    """Python entry (tests, debugging): rows [top, top+h) x cols [left, left+w) of the JPEG scaled by
    1/denom as (h, w, 3) uint8, or None when the region path does not apply (multi-scan file)."""
    lib = load()
    if lib is None:
        raise RuntimeError(f"crop_decode unavailable: {_error}")
    jpeg = np.ascontiguousarray(jpeg, dtype=np.uint8)
    # the decoded window may widen to iMCU boundaries: room for a full scaled row (<= 8 * 2 px margin)
    info = np.zeros(4, np.uint32)
    stride = 3 * (left + w + 64)
    dst = np.empty(stride * h, np.uint8)
    rc = lib.crop_decode(jpeg.ctypes.data, jpeg.size, dst.ctypes.data, dst.size, stride, denom, top, left, h, w,
                         info.ctypes.data)
    if rc == MULTI_SCAN:
        return None
    if rc != OK:
        raise ValueError(f"crop_decode failed (code {rc}) for box top={top} left={left} h={h} w={w} at 1/{denom}")
    xoff = int(info[0])
    rows = dst.reshape(h, stride // 3, 3)
    return rows[:, left - xoff:left - xoff + w].copy()
