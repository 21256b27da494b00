"""Reading source images for conversion: the size caps, decoding to RGB, and why a file is skipped."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def target_size(size: tuple[int, int], max_res: int | None, min_side: int | None = None) -> tuple[int, int] | None:
    """(w, h) after the caps (aspect kept; ffcv's rounding: truncate), or None when no cap shrinks it."""
    r = 1.0
    if max_res is not None:
        r = min(r, max_res / max(size))
    if min_side is not None:
        r = min(r, min_side / min(size))
    if r >= 1:
        return None
    # the epsilon keeps the capped side at exactly N (256 / 375 * 375 is 255.99... in floating point)
    return max(1, int(size[0] * r + 1e-6)), max(1, int(size[1] * r + 1e-6))


def load_rgb(path: Path, max_res: int | None, min_side: int | None = None) -> tuple[np.ndarray, str]:
    """Decode to an RGB uint8 array (JPEG DCT-scaled towards the target size, then shrunk to the
    shortest-side cap with INTER_AREA; the longest-side cap is left to ffcv's field, as in
    ffcv-imagenet); returns (array, source mode)."""
    with Image.open(path) as im:
        mode = im.mode
        target = target_size(im.size, max_res, min_side)
        if target is not None and im.format == "JPEG":
            im.draft(None, target)  # DCT-domain downscale: never below target, so quality is kept
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)  # transparent pixels become white, not black
        if im.mode != "RGB":
            im = im.convert("RGB")
        arr = np.asarray(im, dtype=np.uint8)
    if min_side is not None:
        shrunk = target_size((arr.shape[1], arr.shape[0]), None, min_side)
        if shrunk is not None:
            arr = cv2.resize(arr, shrunk, interpolation=cv2.INTER_AREA)
    return arr, mode


def failure_reason(path: str, e: BaseException) -> str:
    """One-line reason a file does not convert (for the skip report)."""
    if isinstance(e, Image.DecompressionBombError):
        return f"too large ({e})"
    if isinstance(e, Image.UnidentifiedImageError):
        return "not an image (PIL cannot identify it)"
    return f"unreadable ({type(e).__name__}: {e})"


def header_size(path: str) -> tuple[str | None, tuple[int, int]]:
    """(None, (w, h)) from the file's header alone (no pixel data read), or (reason, (0, 0))."""
    try:
        with Image.open(path) as im:
            return None, im.size
    except Exception as e:  # noqa: BLE001 - any failure of one file is a skip reason, not a crash
        return failure_reason(path, e), (0, 0)


def page_size_for(max_pixels: int) -> int:
    """ffcv's writer stores each sample inside one page and fills pages per writer process: a power of
    two >= 2 MiB that holds the largest raw image, and ~8 of them when that stays <= 64 MiB (less
    space lost at page ends), so huge images fit and tiny datasets stay small."""
    need = 3 * max_pixels + 4096
    target = max(min(8 * need, 64 << 20), need)
    page = 2 << 20
    while page < target:
        page *= 2
    return page
