"""FFCV side of the loaders: a keyed (reproducible) RandomResizedCrop decoder that decodes JPEGs at a
reduced DCT scale when the crop allows it, and traversal orders from data.order.

Only jitted ops (the decoders) precede the non-jitted ToTensor/ToDevice, and everything after that
(flip, RandAugment, normalize, erasing) runs on the batch tensor in data.augment: a jitted op after a
non-jitted one makes ffcv's Graph.group_operations loop forever on CPU.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from numba import njit

from . import jpegcrop
from .ffcv_api import (
    IMAGE_MODES,
    CenterCropRGBImageDecoder,
    Compiler,
    IntDecoder,
    Loader,
    ResizedCropRGBImageDecoder,
    ToDevice,
    ToTensor,
    TraversalOrder,
    imdecode,
    resize_crop,
)
from .resample import bicubic_resize
from .rng import batch_key, bicubic_draw, center_crop_params, flip_draw, rrc_params, sample_key


@njit(cache=True, nogil=True)
def hflip_inplace(img):
    """Mirror an (H, W, 3) image left-right in place."""
    w = img.shape[1]
    for r in range(img.shape[0]):
        for c in range(w // 2):
            for k in range(3):
                t = img[r, c, k]
                img[r, c, k] = img[r, w - 1 - c, k]
                img[r, w - 1 - c, k] = t


@njit(cache=True, nogil=True)
def bilinear_resize(src, i, j, h, w, dst):
    """Resize src[i:i+h, j:j+w] (H, W, 3 uint8) into dst: bilinear with pixel centres aligned and
    11-bit fixed-point weights, like cv2 INTER_LINEAR. Only used for scale factors < 2, where
    bilinear needs no anti-aliasing; several times cheaper than ffcv's INTER_AREA resize, which
    dominated the per-image cost."""
    oh, ow = dst.shape[0], dst.shape[1]
    sy, sx = h / oh, w / ow
    xa = np.empty(ow, np.int64)
    xb = np.empty(ow, np.int64)
    wx = np.empty(ow, np.int32)
    for x in range(ow):
        fx = min(max((x + 0.5) * sx - 0.5, 0.0), w - 1.0)
        x0 = int(fx)
        xa[x] = j + x0
        xb[x] = j + min(x0 + 1, w - 1)
        wx[x] = int((fx - x0) * 2048 + 0.5)
    row = np.empty((2, ow, 3), np.int32)
    for y in range(oh):
        fy = min(max((y + 0.5) * sy - 0.5, 0.0), h - 1.0)
        y0 = int(fy)
        wy = np.int32(int((fy - y0) * 2048 + 0.5))
        rows = (i + y0, i + min(y0 + 1, h - 1))
        for k in range(2):
            r = rows[k]
            for x in range(ow):
                a, b, t = xa[x], xb[x], wx[x]
                for c in range(3):
                    row[k, x, c] = np.int32(src[r, a, c]) * (2048 - t) + np.int32(src[r, b, c]) * t
        for x in range(ow):
            for c in range(3):
                dst[y, x, c] = np.uint8((row[0, x, c] * (2048 - wy) + row[1, x, c] * wy + (1 << 21)) >> 22)


@njit(cache=True, nogil=True)
def dct_denominator(crop_h, crop_w, out_h, out_w, max_denom):
    """Largest d in {1, 2, 4, 8} with the crop still >= the output at 1/d scale (so no upsampling
    is introduced and the resize stays a downscale)."""
    d = 1
    while d * 2 <= max_denom and crop_h // (d * 2) >= out_h and crop_w // (d * 2) >= out_w:
        d *= 2
    return d


@njit(nogil=True)
def _no_region(src, dst, stride, denom, top, left, h, w, info):
    """Stand-in for jpegcrop's decoder when it is off or unavailable (keeps decode() typable)."""
    return -1


@njit(nogil=True)
def _numba_bilinear(src, i, j, h, w, dst):
    """bilinear_resize with the native version's signature (used when the shim is unavailable)."""
    bilinear_resize(src, i, j, h, w, dst)
    return 0


class KeyedRandomResizedCropDecoder(ResizedCropRGBImageDecoder):
    """RandomResizedCrop (+ horizontal flip) whose parameters come from rng.rrc_params(key) / flip_draw(key)
    with key = sample_key(batch_key(salt, batch indices), position): reproducible across threads/resumes.

    JPEGs whose crop is at least 2x the output size are decoded at 1/2, 1/4 or 1/8 scale by
    libjpeg-turbo (DCT-domain scaling, much less IDCT work) and the crop box is mapped to that
    scale; the crop distribution is unchanged (up to rounding of the box to scaled pixels).
    With crop_decode, only the crop box is decoded (data.jpegcrop: rows above it skipped, rows
    below never read, columns outside the iMCU-aligned window skipped); multi-scan (progressive)
    JPEGs and raw samples take the full-decode path.
    With fast_resize, the remaining resize is bilinear when it shrinks by less than 2x (no
    anti-aliasing needed) and ffcv's INTER_AREA (OpenCV) otherwise. A sample that
    rng.bicubic_draw(key, p_bicubic) selects is resized bicubic instead (data.resample, PIL's
    arithmetic), for timm's `random` (p 0.5) and `bicubic` (p 1) train interpolation.
    With center_pct > 0 the crop is the validation center crop instead (rng.center_crop_params; FFCV's
    CenterCropRGBImageDecoder geometry), for `data.val_interpolation: bicubic`.
    """

    def __init__(self, output_size: tuple[int, int], salt: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 dct_scaling: bool = True, hflip: float = 0.0, fast_resize: bool = True, crop_decode: bool = True,
                 p_bicubic: float = 0.0, center_pct: float = 0.0):
        super().__init__(output_size)
        self.center_pct = float(center_pct)  # > 0: the validation center crop (rng.center_crop_params) instead
        self.p_bicubic = float(p_bicubic)
        self.crop_decode = crop_decode
        self.hflip = float(hflip)
        self.fast_resize = fast_resize
        self.salt = int(salt) & 0xFFFFFFFFFFFFFFFF
        self.scale = scale
        self.ratio = ratio
        self.dct_scaling = dct_scaling

    @property
    def get_crop_generator(self):  # required by the abstract base; generate_code below does not use it
        return rrc_params

    def generate_code(self) -> Callable:
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        salt = np.uint64(self.salt)
        s_lo, s_hi = float(self.scale[0]), float(self.scale[1])
        r_lo, r_hi = float(self.ratio[0]), float(self.ratio[1])
        out_h, out_w = int(self.output_size[0]), int(self.output_size[1])
        max_denom = 8 if self.dct_scaling else 1
        native = jpegcrop.numba_fns()
        use_region = native is not None and self.crop_decode
        region_c, bilinear_c = native if native is not None else (_no_region, _numba_bilinear)
        p_flip = self.hflip
        p_bicubic = self.p_bicubic
        fast = self.fast_resize
        center_pct = self.center_pct
        center = center_pct > 0

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            bkey = batch_key(salt, batch_indices)
            info = np.empty((len(batch_indices), 4), np.uint32)  # one row per sample: threads share nothing
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height = np.uint32(field["height"])
                width = np.uint32(field["width"])
                key = sample_key(bkey, dst_ix)
                if center:
                    i, j, h, w = center_crop_params(height, width, center_pct)
                else:
                    i, j, h, w = rrc_params(key, height, width, s_lo, s_hi, r_lo, r_hi)
                if field["mode"] == jpg:
                    d = dct_denominator(h, w, out_h, out_w, max_denom)
                    sh = (height + d - 1) // d
                    sw = (width + d - 1) // d
                    buf = temp_storage[dst_ix]
                    if d > 1:
                        i0 = i // d
                        j0 = j // d
                        i1 = min(sh, max(i0 + 1, (i + h + d // 2) // d))
                        j1 = min(sw, max(j0 + 1, (j + w + d // 2) // d))
                        i, j, h, w = i0, j0, i1 - i0, j1 - j0
                    rc = -1
                    if use_region:
                        # only the crop's rows (and iMCU-aligned columns) are decoded, into rows
                        # of the full scaled width; the window starts at column info[dst_ix, 0]
                        rc = region_c(image_data, buf, 3 * sw, d, i, j, h, w, info[dst_ix])
                    if rc == 0:
                        temp_buffer = buf[: 3 * sw * h].reshape(h, sw, 3)
                        i = 0
                        j = j - np.int64(info[dst_ix, 0])
                    else:  # multi-scan (progressive) JPEG, or region decoding off
                        imdecode_c(image_data, buf, height, width, height, width, 0, 0, 1, d, False, False)
                        temp_buffer = buf[: 3 * sh * sw].reshape(sh, sw, 3)
                else:
                    temp_buffer = image_data.reshape(height, width, 3)
                # cv2's INTER_AREA is slow only when shrinking by a non-integer factor
                if bicubic_draw(key, p_bicubic):
                    bicubic_resize(temp_buffer, i, j, h, w, destination[dst_ix])
                elif fast and (h > out_h or w > out_w) and h < 2 * out_h and w < 2 * out_w:
                    bilinear_c(temp_buffer, i, j, h, w, destination[dst_ix])
                else:
                    resize_crop_c(temp_buffer, i, i + h, j, j + w, destination[dst_ix])
                if flip_draw(key, p_flip):
                    hflip_inplace(destination[dst_ix])
            return destination[: len(batch_indices)]

        decode.is_parallel = True
        return decode


class IndexOrder(TraversalOrder):
    """A TraversalOrder fed by a function epoch -> indices (data.order), with a resume offset.

    ffcv's Loader accepts an *instance* and calls it with itself (`order(self)`), hence __call__.
    """

    def __init__(self, fn: Callable[[int], np.ndarray]):
        self.fn = fn
        self.skip = 0  # samples to drop at the start of the next epoch (mid-epoch resume)

    def __call__(self, loader: Loader) -> "IndexOrder":
        TraversalOrder.__init__(self, loader)
        return self

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.fn(epoch)[self.skip:].astype(np.uint64)


class FfcvSource:
    """Batches of (uint8 NHWC images, int64 labels) on `device` from a .beton, for one rank."""

    def __init__(self, path: Path, *, train: bool, order_fn: Callable[[int], np.ndarray], batch_size: int,
                 img_size: int, num_workers: int, device: torch.device, salt: int = 0,
                 scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), crop_pct: float = 0.9, os_cache: bool = True,
                 batches_ahead: int = 3, dct_scaling: bool = True, hflip: float = 0.0, fast_resize: bool = True,
                 crop_decode: bool = True, p_bicubic: float = 0.0):
        self.order = IndexOrder(order_fn)
        self.batch_size = batch_size
        if train:
            decoder = KeyedRandomResizedCropDecoder((img_size, img_size), salt, scale, ratio, dct_scaling, hflip,
                                                    fast_resize, crop_decode, p_bicubic)
        elif p_bicubic > 0:  # val_interpolation bicubic: full-resolution decode (no DCT scaling), PIL's bicubic
            decoder = KeyedRandomResizedCropDecoder((img_size, img_size), salt, dct_scaling=False,
                                                    crop_decode=crop_decode, p_bicubic=1.0, center_pct=crop_pct)
        else:
            decoder = CenterCropRGBImageDecoder((img_size, img_size), ratio=crop_pct)
        image = [decoder, ToTensor()]
        label = [IntDecoder(), ToTensor()]
        if device.type == "cuda":
            image.append(ToDevice(device, non_blocking=True))
            label.append(ToDevice(device, non_blocking=True))
        self.loader = Loader(str(path), batch_size=batch_size, num_workers=max(1, num_workers), os_cache=os_cache,
                             order=self.order, drop_last=train, seed=0, batches_ahead=batches_ahead,
                             pipelines={"image": image, "label": label})
        self.num_samples = self.loader.reader.num_samples

    def epoch_batches(self, epoch: int) -> int:
        n = len(self.order.fn(epoch))
        return n // self.batch_size if self.loader.drop_last else -(-n // self.batch_size)

    def iterate(self, epoch: int, start_batch: int):
        self.order.skip = start_batch * self.batch_size
        self.loader.next_epoch = epoch
        try:
            it = iter(self.loader)
        finally:
            self.order.skip = 0
        for images, labels in it:
            # ffcv reuses its batch buffers a few batches later: copy the labels out (the images are
            # copied by the augmentation's first op)
            yield images, labels.reshape(-1).clone()
