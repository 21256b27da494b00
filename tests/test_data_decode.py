"""Region decoding (data/jpegcrop.c): the partially decoded crop equals full-decode-then-crop, the
native bilinear resize equals the numba one bit for bit, progressive/corrupt JPEGs fall back or fail
cleanly, the loader gives the same batches with crop_decode on and off, and the recycled batch
buffers are never handed out while still referenced."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from ffcv.libffcv import imdecode
from PIL import Image

from data import jpegcrop
from data.augment import cpu_float_nchw
from data.config import DataConfig
from data.ffcv_backend import bilinear_resize
from data.loaders import build_train_loader

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # numba finalizers


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs + fine noise: exercises both DC and AC coefficients."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((h // 16 + 2, w // 16 + 2, 3)) * 255).astype(np.uint8))
    img = np.asarray(small.resize((w, h), Image.BICUBIC), np.int16) + rng.integers(-20, 21, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(img: np.ndarray, **kw) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90, **kw)
    return np.frombuffer(buf.getvalue(), np.uint8)


def full_decode(jpg: np.ndarray, h: int, w: int, d: int) -> np.ndarray:
    out = np.zeros(h * w * 3, np.uint8)
    imdecode(jpg, out, h, w, h, w, 0, 0, 1, d, False, False)
    sh, sw = -(-h // d), -(-w // d)
    return out[: sh * sw * 3].reshape(sh, sw, 3)


@pytest.mark.parametrize("subsampling", [0, 2])  # 4:4:4 and 4:2:0 (what data convert writes)
def test_region_equals_full_decode_then_crop(subsampling):
    H, W = 250, 333  # not multiples of the iMCU: partial blocks at the right/bottom edges
    jpg = encode(photo(H, W), subsampling=subsampling)
    rng = np.random.default_rng(1)
    for d in (1, 2, 4, 8):
        full = full_decode(jpg, H, W, d)
        sh, sw = full.shape[:2]
        boxes = [(0, 0, sh, sw), (sh - 3, sw - 5, 3, 5), (0, sw - 1, sh, 1)]
        for _ in range(12):
            h, w = rng.integers(1, sh + 1), rng.integers(1, sw + 1)
            boxes.append((rng.integers(0, sh - h + 1), rng.integers(0, sw - w + 1), h, w))
        for top, left, h, w in boxes:
            region = jpegcrop.decode_region(jpg, d, int(top), int(left), int(h), int(w))
            want = full[top:top + h, left:left + w].astype(int)
            diff = np.abs(region.astype(int) - want)
            # same IDCT; only chroma upsampling at a window edge may differ (a few grey levels)
            assert diff.mean() < 0.5 and diff.max() <= 16, (d, top, left, h, w, diff.mean(), diff.max())
            if h * w > 400:
                assert diff.mean() < 0.05, (d, top, left, h, w, diff.mean())


def test_progressive_falls_back_and_corrupt_fails_cleanly():
    img = photo(64, 80)
    assert jpegcrop.decode_region(encode(img, progressive=True), 1, 0, 0, 64, 80) is None
    with pytest.raises(ValueError, match="crop_decode failed"):
        jpegcrop.decode_region(np.frombuffer(b"\xff\xd8not a jpeg at all" * 4, np.uint8), 1, 0, 0, 8, 8)
    with pytest.raises(ValueError, match="crop_decode failed"):  # box outside the image
        jpegcrop.decode_region(encode(img), 1, 60, 0, 8, 8)


def test_native_bilinear_equals_numba_bit_for_bit():
    _, native = jpegcrop.numba_fns()
    src = photo(300, 360, seed=2)
    a, b = np.empty((224, 224, 3), np.uint8), np.empty((224, 224, 3), np.uint8)
    for i, j, h, w in [(0, 0, 300, 360), (3, 5, 120, 130), (10, 20, 250, 300), (7, 9, 1, 1), (299, 0, 1, 360)]:
        bilinear_resize(src, i, j, h, w, a)
        assert native(src, i, j, h, w, b) == 0
        assert np.array_equal(a, b), (i, j, h, w)


def test_build_error_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(RuntimeError, match="install a C compiler and libjpeg62-turbo-dev"):
        jpegcrop.build(tmp_path / "x.so")


@pytest.fixture(scope="module")
def photos_beton(tmp_path_factory):
    from data.convert import ConvertOptions, convert

    root = tmp_path_factory.mktemp("photos")
    src = root / "photos"
    for c in range(2):
        (src / f"c{c}").mkdir(parents=True)
        for i in range(8):
            Image.fromarray(photo(180 + 8 * i, 230, seed=10 * c + i)).save(src / f"c{c}" / f"{i}.jpg", quality=90)
    beton = root / "photos.beton"
    convert(src, beton, ConvertOptions(max_res=None, write_mode="jpg", workers=1), log=lambda *_: None)
    return beton


def first_batch(beton, **kw):
    # img_size 48: crops go through DCT scaling (>= 2x), the bilinear (1-2x) and the upscale paths
    cfg = DataConfig(train_path=beton, val_path=beton, img_size=48, num_workers=1, auto_augment=None, reprob=0.0,
                     hflip=0.5, aug_repeats=1, **kw)
    loader = build_train_loader(cfg, batch_size=16, seed=0)
    loader.set_epoch(1)
    return [(x.clone(), y.clone()) for x, y in loader][0]


def test_loader_same_batches_with_and_without_crop_decode(photos_beton):
    (xa, ya), (xb, yb) = first_batch(photos_beton, crop_decode=False), first_batch(photos_beton, crop_decode=True)
    assert torch.equal(ya, yb)
    diff = (xa - xb).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.5, (diff.mean(), diff.max())  # same crops and flips


def test_loader_without_the_shim_gives_the_same_batches(photos_beton, monkeypatch):
    xa, ya = first_batch(photos_beton, crop_decode=False)
    monkeypatch.setattr(jpegcrop, "numba_fns", lambda: None)  # as when it cannot be compiled
    xb, yb = first_batch(photos_beton, crop_decode=True)
    assert torch.equal(ya, yb) and torch.equal(xa, xb)  # full decode + the numba bilinear: bit for bit


def test_recycled_batch_buffers_are_never_shared_while_referenced():
    images = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    one, zero = np.ones(3, np.float32), np.zeros(3, np.float32)
    a = cpu_float_nchw(images, one, zero)
    view = a[1]
    ptr = a.data_ptr()
    del a
    b = cpu_float_nchw(images, one, zero)
    assert b.data_ptr() != ptr  # a view of the first batch is still alive
    assert torch.equal(view, images[1].permute(2, 0, 1).float())
    b_ptr = b.data_ptr()
    del view, b
    c = cpu_float_nchw(images * 0, one, zero)
    assert c.data_ptr() in {ptr, b_ptr} and float(c.sum()) == 0.0  # recycled once released
