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
from data.loaders import build_train_loader
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
