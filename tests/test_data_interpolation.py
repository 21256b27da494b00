"""Train interpolation (`data.train_interpolation`): the bicubic resize equals PIL's (what timm's
`bicubic`/`random` use), and `random` resizes each training crop either like `bilinear` or like
`bicubic`, about half each, the choice keyed like the crop (same on both backends, same on a re-run)."""
from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch
from PIL import Image

from data.config import DataConfig
from data.loaders import build_train_loader, build_val_loader
from data.resample import bicubic_resize

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # numba finalizers

PLAIN = dict(auto_augment=None, reprob=0.0, hflip=0.0, aug_repeats=1, ra_selected_round=0)


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((h // 8 + 2, w // 8 + 2, 3)) * 255).astype(np.uint8))
    img = np.asarray(small.resize((w, h), Image.BICUBIC), np.int16) + rng.integers(-30, 31, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("box,out", [((10, 7, 60, 80), (32, 32)),      # shrink: antialiased support
                                     ((3, 2, 20, 17), (64, 64)),        # enlarge
                                     ((0, 0, 300, 400), (224, 224)),    # whole image, 1.3-1.8x shrink
                                     ((5, 9, 40, 30), (40, 30))])       # same size
def test_bicubic_resize_is_pils(box, out):
    img = _photo(300, 400, sum(box))
    i, j, h, w = box
    dst = np.zeros((*out, 3), np.uint8)
    bicubic_resize(img, i, j, h, w, dst)
    # timm: RandomResizedCropAndInterpolation -> torchvision resized_crop on a PIL image = crop, then resize
    ref = np.asarray(Image.fromarray(img[i:i + h, j:j + w]).resize((out[1], out[0]), Image.BICUBIC)).astype(int)
    diff = np.abs(dst.astype(int) - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float weights vs PIL's fixed point


def _batches(demo, backend: str, interp: str, n: int = 2) -> torch.Tensor:
    paths = (demo.train_beton, demo.val_beton) if backend == "ffcv" else (demo.train_dir, demo.val_dir)
    cfg = DataConfig(train_path=paths[0], val_path=paths[1], backend=backend, img_size=32, num_workers=1,
                     rrc_scale=(0.2, 1.0), train_interpolation=interp, **PLAIN)
    loader = build_train_loader(cfg, batch_size=64, seed=5)
    loader.set_epoch(1)
    return torch.cat([x for x, _ in islice(loader, n)])


def test_random_picks_bilinear_or_bicubic_per_image(demo_data):
    lin, cub, rnd = (_batches(demo_data, "ffcv", m) for m in ("bilinear", "bicubic", "random"))
    same_lin = (rnd == lin).flatten(1).all(1)
    same_cub = (rnd == cub).flatten(1).all(1)
    differ = ~(lin == cub).flatten(1).all(1)
    assert differ.float().mean() > 0.9  # the two resizes give different pixels on (almost) every crop
    assert bool((same_lin | same_cub).all())  # each image is one or the other, same crop ...
    share = same_cub[differ].float().mean().item()
    assert 0.3 < share < 0.7, share  # ... bicubic for about half of them
    assert torch.equal(_batches(demo_data, "ffcv", "random"), rnd)  # the choice is keyed, not global state

    torch_rnd, torch_lin = (_batches(demo_data, "torch", m, 1) for m in ("random", "bilinear"))
    picked = same_cub[:64] & differ[:64]
    assert (torch_rnd - rnd[:64]).abs().mean() < 0.1  # the same choices on the reference backend
    # where the ffcv loader chose bicubic, the torch one did too (it no longer matches its bilinear)
    assert bool((~(torch_rnd[picked] == torch_lin[picked]).flatten(1).all(1)).all())


def _val_batch(demo, backend: str, interp: str, crop_pct: float = 0.875) -> torch.Tensor:
    paths = (demo.train_beton, demo.val_beton) if backend == "ffcv" else (demo.train_dir, demo.val_dir)
    cfg = DataConfig(train_path=paths[0], val_path=paths[1], backend=backend, img_size=32, num_workers=1,
                     crop_pct=crop_pct, val_interpolation=interp, **PLAIN)
    source = build_val_loader(cfg, batch_size=16).source
    x, _ = next(iter(source.iterate(0, 0)))  # uint8 NHWC, before normalisation
    return x.clone().numpy()


def test_val_bicubic_resizes_the_center_crop_like_pil(demo_data):
    """`data.val_interpolation: bicubic`: the center crop resized with PIL's bicubic (timm's/DeiT's/Swin's eval
    resize) on both backends; `area` (FFCV's decoder) gives other pixels from the same crop."""
    from data.rng import center_crop_params

    area, cub = _val_batch(demo_data, "ffcv", "area"), _val_batch(demo_data, "ffcv", "bicubic")
    assert (area != cub).reshape(len(cub), -1).any(1).mean() > 0.9
    # the demo's val images are 32 px squares: crop_pct 1 at 32 px is FFCV's plain decode of the whole image
    full = _val_batch(demo_data, "ffcv", "area", crop_pct=1.0)
    i, j, h, w = center_crop_params(32, 32, 0.875)
    for k in range(len(cub)):
        ref = np.zeros((32, 32, 3), np.uint8)
        bicubic_resize(full[k], i, j, h, w, ref)
        assert np.abs(cub[k].astype(int) - ref).max() <= 1
    # the reference backend against PIL itself: crop the centre, resize bicubic
    torch_cub = _val_batch(demo_data, "torch", "bicubic")
    files = sorted(p for p in demo_data.val_dir.rglob("*") if p.is_file())
    for k in range(4):
        img = Image.open(files[k]).convert("RGB")
        assert img.size == (32, 32)
        ref = np.asarray(img.crop((j, i, j + w, i + h)).resize((32, 32), Image.BICUBIC)).astype(int)
        assert np.abs(torch_cub[k].astype(int) - ref).max() <= 1
