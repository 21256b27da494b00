"""Loaders on the shipped digits: shapes/dtypes/normalisation, determinism + resume, sharding,
repeated augmentation, backend agreement, DCT-scaled decoding, the CPU pipeline not hanging."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.config import DataConfig
from data.loaders import build_train_loader, build_val_loader
from data.order import train_order, val_order

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # numba finalizers

PLAIN = dict(auto_augment=None, reprob=0.0, hflip=0.0)  # no random augmentation beyond the crop
IDENTITY_CROP = dict(rrc_scale=(1.0, 1.0), rrc_ratio=(1.0, 1.0))  # 32x32 images: the crop is the image


@pytest.fixture(scope="module")
def demo(demo_data):
    """The session's shipped digits dataset (tests/conftest.py builds it once with prepare_demo)."""
    return demo_data


def cfg_for(demo, backend="ffcv", **kw) -> DataConfig:
    paths = (demo.train_beton, demo.val_beton) if backend == "ffcv" else (demo.train_dir, demo.val_dir)
    base = dict(train_path=paths[0], val_path=paths[1], backend=backend, img_size=32, num_workers=2)
    return DataConfig(**{**base, **kw})


def collect(loader, max_batches: int | None = None):
    xs, ys = zip(*[(x.clone(), y.clone()) for x, y in islice(loader, max_batches)])
    return torch.cat(xs), torch.cat(ys)


def test_val_shapes_dtypes_normalisation(demo):
    cfg = cfg_for(demo, crop_pct=1.0)
    loader = build_val_loader(cfg, batch_size=100)
    assert len(loader) == 4  # 360 samples, last batch partial
    x, y = collect(loader)
    assert x.shape == (360, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sorted(Counter(y.tolist())) == list(range(10))
    # undoing the normalisation gives the JPEG tree's pixels (up to JPEG re-encoding)
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    pixels = (x * std + mean) * 255
    files = sorted(p for p in demo.val_dir.rglob("*.jpg"))
    ref = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])).permute(0, 3, 1, 2)
    assert (pixels - ref.float()).abs().mean() < 3.0
    assert torch.allclose(x.mean(dim=(0, 2, 3)), ((ref.float() / 255 - mean) / std).mean(dim=(0, 2, 3)), atol=0.03)
    bf = build_val_loader(cfg_for(demo, dtype="bfloat16"), batch_size=128)
    xb, _ = next(iter(bf))
    assert xb.dtype == torch.bfloat16 and xb.shape == (128, 3, 32, 32)


def test_train_deterministic_resume_and_reshuffle(demo):
    cfg = cfg_for(demo, reprob=0.5)  # full recipe: RRC, flip, RandAugment, erasing
    a = build_train_loader(cfg, batch_size=64, seed=7)
    b = build_train_loader(cfg, batch_size=64, seed=7)
    a.set_epoch(1)
    xa, ya = collect(a)
    assert len(a) == 20 and xa.shape == (1280, 3, 32, 32)  # RASampler: floor(1437/256)*256 per epoch
    b.set_epoch(1, start_batch=15)
    xb, yb = collect(b)
    assert torch.equal(xb, xa[15 * 64:]) and torch.equal(yb, ya[15 * 64:])
    assert torch.equal(collect(b, 2)[0], xa[:128])  # start_batch applies to one iteration only
    b.set_epoch(2)
    x2, y2 = collect(b, 2)
    assert not torch.equal(y2, ya[:128])
    c = build_train_loader(cfg, batch_size=64, seed=8)
    c.set_epoch(1)
    assert not torch.equal(collect(c, 2)[1], ya[:128])
    # augmentation is on: the same sample never comes out twice identical within an epoch
    assert (xa[0::64] - xa[1::64]).abs().mean() > 0.1


def test_sharding_two_ranks_disjoint_and_covering(demo):
    # identify samples by their (deterministic) pixels: identity crop, no augmentation
    cfg = cfg_for(demo, aug_repeats=1, **PLAIN, **IDENTITY_CROP)
    ref_x, ref_y = collect(build_val_loader(cfg_for(demo, crop_pct=1.0), batch_size=360))
    ref_train = collect(build_val_loader(cfg.model_copy(update={"val_path": demo.train_beton, "crop_pct": 1.0}),
                                         batch_size=512))[0]
    keys = {tuple(v.flatten()[::37].tolist()): i for i, v in enumerate(ref_train)}
    assert len(keys) == len(ref_train) == 1437
    seen = []
    for rank in range(2):
        loader = build_train_loader(cfg, batch_size=16, seed=0, rank=rank, world_size=2)
        loader.set_epoch(3)
        x, _ = collect(loader)
        assert len(x) == 719 // 16 * 16
        seen.append([keys[tuple(v.flatten()[::37].tolist())] for v in x])
    assert not set(seen[0]) & set(seen[1])
    full = [set(train_order(1437, seed=0, epoch=3, rank=r, world_size=2).tolist()) for r in range(2)]
    assert full[0] | full[1] == set(range(1437)) and set(seen[0]) <= full[0] and set(seen[1]) <= full[1]
    # val: each sample exactly once across ranks, no padding duplicates
    parts = [collect(build_val_loader(cfg_for(demo, crop_pct=1.0), batch_size=64, rank=r, world_size=2))
             for r in range(2)]
    assert len(parts[0][0]) + len(parts[1][0]) == 360
    assert torch.equal(parts[1][0], ref_x[1::2]) and torch.equal(parts[0][1], ref_y[0::2])


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_repeated_augmentation_order(world):
    """DeiT RASampler: each kept sample has `reps` views spread over the ranks, the epoch keeps
    floor(n/256)*256 samples in total (as many as without repetition), reshuffled per epoch."""
    n, reps = 1000, 3
    ranks = [train_order(n, seed=1, epoch=0, rank=r, world_size=world, aug_repeats=reps) for r in range(world)]
    keep = n // 256 * 256 // world
    assert all(len(o) == keep for o in ranks)
    counts = Counter(np.concatenate(ranks).tolist())
    assert max(counts.values()) == reps
    full_views = sum(1 for c in counts.values() if c == reps)
    assert full_views * reps >= keep * world - 2 * reps * world  # only the cut at the end splits a sample
    if world == reps:
        # the three views of a sample go to the three ranks, at the same position
        assert all(np.array_equal(o, ranks[0]) for o in ranks) and len(set(ranks[0].tolist())) == keep
    if world == 1:
        o = ranks[0][: keep // reps * reps]
        assert np.array_equal(o[0::3], o[1::3]) and np.array_equal(o[0::3], o[2::3])
    if world > reps:
        for o in ranks:  # never two views of one sample on the same rank
            assert len(set(o.tolist())) == len(o)
    epoch1 = [train_order(n, seed=1, epoch=1, rank=r, world_size=world, aug_repeats=reps) for r in range(world)]
    assert not np.array_equal(epoch1[0], ranks[0])
    # small datasets (< selected_round) keep ceil(n / world) per rank instead of nothing
    assert len(train_order(100, seed=1, epoch=0, rank=0, world_size=world, aug_repeats=reps)) == -(-100 // world)


def test_plain_sharding_order_covers_each_sample_once():
    n, world = 1001, 4
    ranks = [train_order(n, seed=2, epoch=5, rank=r, world_size=world) for r in range(world)]
    allidx = np.concatenate(ranks)
    assert len(allidx) == 4 * 251 and set(allidx.tolist()) == set(range(n))  # DistributedSampler padding: 3 repeats
    assert len(allidx) - len(set(allidx.tolist())) == 3
    assert sorted(np.concatenate([val_order(n, rank=r, world_size=world) for r in range(world)]).tolist()) == \
        list(range(n))


def test_repeated_augmentation_in_loader_gives_different_views(demo):
    cfg = cfg_for(demo, aug_repeats=3, **{**PLAIN, "hflip": 0.5})
    loader = build_train_loader(cfg, batch_size=60, seed=0)
    order = train_order(1437, seed=0, epoch=0, rank=0, world_size=1, aug_repeats=3)
    x, _ = next(iter(loader))
    assert order[0] == order[1] == order[2]  # world 1: the three copies are adjacent
    assert (x[0] - x[1]).abs().mean() > 0.05 and (x[1] - x[2]).abs().mean() > 0.05


def test_backends_agree(demo):
    out = {}
    for backend in ("ffcv", "torch"):
        loader = build_train_loader(cfg_for(demo, backend, reprob=0.0), batch_size=64, seed=3)
        loader.set_epoch(2, start_batch=18)
        out[backend] = collect(loader)
    (xf, yf), (xt, yt) = out["ffcv"], out["torch"]
    assert torch.equal(yf, yt) and xf.shape == xt.shape == (128, 3, 32, 32)
    assert (xf - xt).abs().mean() < 0.1  # same crops, flips and RandAugment; JPEG re-encoding differs
    assert val_order(360, rank=0, world_size=1).tolist() == list(range(360))


def test_dct_scaled_decode_matches_full_decode(tmp_path):
    from data.convert import ConvertOptions, convert

    src = tmp_path / "big"
    yy, xx = np.mgrid[0:320, 0:400]
    for c in range(2):
        (src / f"c{c}").mkdir(parents=True)
        for i in range(8):
            img = np.stack([(xx * (i + 1) / 8 + yy) % 256, (yy * 2 + 40 * c) % 256, (xx + yy) // 3 % 256], -1)
            Image.fromarray(img.astype(np.uint8)).save(src / f"c{c}" / f"{i}.jpg", quality=95)
    beton = tmp_path / "big.beton"
    convert(src, beton, ConvertOptions(max_res=None, write_mode="jpg", workers=1), log=lambda *_: None)
    base = dict(train_path=beton, val_path=beton, img_size=40, num_workers=1, rrc_scale=(0.5, 1.0), **PLAIN)
    outs = []
    for dct, fast in ((False, False), (True, False)):
        loader = build_train_loader(DataConfig(**base, dct_scaling=dct, fast_resize=fast), batch_size=16, seed=0)
        outs.append(collect(loader)[0])
    diff = (outs[0] - outs[1]).abs().mean()
    assert 0 < diff < 0.08, diff  # decoded at 1/2..1/8 scale, same crops: nearly the same pixels
    # img_size 200 on 400x320 images: most crops shrink by 1-2x, where fast_resize is bilinear
    base.update(img_size=200, rrc_scale=(0.3, 1.0))
    outs = [collect(build_train_loader(DataConfig(**base, dct_scaling=False, fast_resize=fast), batch_size=16,
                                       seed=0))[0] for fast in (False, True)]
    diff = (outs[0] - outs[1]).abs().mean()
    assert 0 < diff < 0.05, diff  # same crops, bilinear instead of INTER_AREA: ~1 grey level


def test_cpu_pipeline_builds_without_hanging(demo):
    code = textwrap.dedent(f"""
        import torch
        from data.config import DataConfig
        from data.loaders import build_train_loader, build_val_loader
        cfg = DataConfig(train_path="{demo.train_beton}", val_path="{demo.val_beton}", img_size=32, num_workers=2)
        t = build_train_loader(cfg, batch_size=32, seed=0, device=torch.device("cpu"))
        v = build_val_loader(cfg, batch_size=32, device="cpu")
        x, y = next(iter(t)); xv, yv = next(iter(v))
        print("OK", tuple(x.shape), tuple(xv.shape))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                       cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 0, p.stderr[-2000:]
    assert "OK (32, 3, 32, 32) (32, 3, 32, 32)" in p.stdout


def test_config_check(demo, tmp_path):
    assert cfg_for(demo).check(10) == []
    assert cfg_for(demo, "torch").check(10) == []
    errs = cfg_for(demo).check(1000)
    assert len(errs) == 2 and all("num_classes=1000" in e for e in errs)
    errs = DataConfig(train_path=tmp_path / "no.beton", val_path=demo.val_dir).check(10)
    assert len(errs) == 2 and "does not exist" in errs[0] and "needs a .beton file" in errs[1]
    other = tmp_path / "other.beton"
    other.write_bytes(demo.val_beton.read_bytes())
    (tmp_path / "other.labels.json").write_text('{"a": 0, "b": 1, "c": 2, "d": 3, "e": 4, "f": 5, "g": 6, '
                                                 '"h": 7, "i": 8, "j": 9}')
    errs = DataConfig(train_path=demo.train_beton, val_path=other).check(10)
    assert len(errs) == 1 and "differ" in errs[0]
    (tmp_path / "cut.beton").write_bytes(demo.val_beton.read_bytes()[:5000])
    errs = DataConfig(train_path=tmp_path / "cut.beton", val_path=demo.val_beton).check(10)
    assert len(errs) == 1 and "truncated" in errs[0]
    with pytest.raises(ValueError, match="extra"):
        DataConfig(train_path=demo.train_beton, val_path=demo.val_beton, nope=1)
    with pytest.raises(ValueError, match="auto_augment"):
        DataConfig(train_path=demo.train_beton, val_path=demo.val_beton, auto_augment="rand-m9-zz3")
    with pytest.raises(ValueError, match="batch_size 5000"):
        build_train_loader(cfg_for(demo), batch_size=5000, seed=0)
