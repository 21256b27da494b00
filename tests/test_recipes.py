"""The shipped research configs train their upstream's recipe (README "Recipes").

For every run of configs/paper, configs/minivit/mini_swin_style_deit_small.yaml, configs/deit_distill and
configs/dgmr: the optimizer and scheduler built by jobs.recipe (on a small stand-in of the config's model, the
same timm family and strategies, so the same parameter names and groups) give the lr, and the weight decay
where it is scheduled, that the upstream code's formula gives, written out here from the upstream sources, at
update 0, the end of warmup, the middle and the last update; the parameters that get weight decay are the ones
upstream decays; the data section gives upstream's crops, interpolation, flip and normalisation. The EMA of a
shared weight follows the config's choice. Studies are expanded by the real loader with the schema only (no
dataset, no weights on disk): what is pinned here is the recipe, not the files.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from data.rng import BICUBIC_PROBABILITY
from jobs import recipe
from jobs.models import build_model
from jobs.spec import RunSpec, TrainConfig, read_yaml
from jobs.study import load_study

REPO = Path(__file__).resolve().parents[1]
U = 7  # optimizer updates per epoch of the stand-in loader
SMALL = {"depth": 4, "embed_dim": 32, "num_heads": 2, "patch_size": 8, "img_size": 32, "num_classes": 10}
RUN_CONFIGS = ["configs/paper/baseline.yaml", "configs/paper/grouped.yaml", "configs/paper/shallow.yaml",
               "configs/paper/thin.yaml", "configs/minivit/mini_swin_style_deit_small.yaml",
               "configs/minivit/mini_deit_base.yaml", "configs/minivit/mini_deit_small.yaml",
               "configs/minivit/mini_deit_tiny.yaml"]
STUDIES = ["configs/paper/study.yaml", "configs/deit_distill/study.yaml", "configs/dgmr/study.yaml"]


def _load_runs() -> dict[str, RunSpec]:
    runs = {path: RunSpec.model_validate(read_yaml(REPO / path)) for path in RUN_CONFIGS}
    for path in STUDIES:  # files=False: the shipped configs name ImageNet .beton files and hub weights
        for run in load_study(REPO / path, files=False).runs:
            runs[f"{path}:{run.run_id}"] = run
    return runs


RUNS = _load_runs()


# ---- upstream formulas, from the upstream sources ------------------------------------------------------

def timm_cosine(t: int, peak: float, warmup_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """timm CosineLRScheduler, warmup_prefix False, at step t (the epoch for timm's train.py and DeiT's main.py,
    the update for Mini-Swin's lr_scheduler.py with t_in_epochs=False)."""
    if t < warmup:
        return warmup_lr + t * (peak - warmup_lr) / warmup
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * t / total))


def dinov2_cosine(k: int, base: float, final: float, total: int, warmup: int = 0) -> float:
    """dinov2/utils/utils.py CosineScheduler (start_warmup_value 0, no freeze) at iteration k, as DGMR's
    distill.py indexes it before every update."""
    if k < warmup:
        return base * k / (warmup - 1)  # np.linspace(0, base, warmup)[k]
    i, n = k - warmup, total - warmup
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n))


def paper_lr(spec: RunSpec, t: int) -> float:
    # seed: timm train.py --lr 0.001 (used as given), --warmup-epochs 5, warmup_lr 1e-5, min_lr 0, per epoch
    return timm_cosine(t // U, 1e-3, 1e-5, 0.0, 5, 300)


def deit_lr(spec: RunSpec, t: int) -> float:
    # DeiT main.py: lr 5e-4 x batch x world / 512 (warmup 1e-6 and min 1e-5 unscaled), per epoch
    return timm_cosine(t // U, 5e-4 * spec.train.global_batch(spec.resources.num_workers) / 512, 1e-6, 1e-5, 5, 300)


def mini_swin_lr(spec: RunSpec, t: int) -> float:
    # Mini-Swin main.py: lr, warmup lr and min lr all x batch x world / 512; lr_scheduler.py steps per update.
    # (Upstream calls step_update(n) after update n, so its update n + 1 runs at this value: one update later.)
    scale = spec.train.global_batch(spec.resources.num_workers) / 512
    return timm_cosine(t, 5e-4 * scale, 5e-7 * scale, 5e-6 * scale, 20 * U, 300 * U)


def dgmr_lr(spec: RunSpec, t: int) -> float:
    # DGMR distill.py: lr = base_lr x batch / 256, CosineScheduler(lr, min_lr 1e-6, warmup 2 epochs, all iters)
    lr = 6e-5 * spec.train.global_batch(spec.resources.num_workers) / 256
    return dinov2_cosine(t, lr, 1e-6, spec.train.epochs * U, warmup=2 * U)


def dgmr_wd(spec: RunSpec, t: int) -> float:
    return dinov2_cosine(t, 0.04, 0.2, spec.train.epochs * U)


def timm_decays(name: str, p: torch.nn.Parameter, skip: set[str]) -> bool:
    # timm param_groups_weight_decay = Mini-Swin optimizer.py set_weight_decay: not 1-D, not a bias, not skipped
    return not (p.ndim <= 1 or name.endswith(".bias") or name in skip)


RECIPES = {  # config -> (lr formula, weight-decay formula or None, which parameters decay)
    "configs/paper": (paper_lr, None, timm_decays),
    "configs/minivit/mini_swin_style_deit_small.yaml": (mini_swin_lr, None, timm_decays),
    "configs/deit_distill": (deit_lr, None, timm_decays),
    "configs/minivit/mini_deit_": (deit_lr, None, timm_decays),  # Mini-DeiT main.py: DeiT's create_scheduler
    "configs/dgmr": (dgmr_lr, dgmr_wd, lambda name, p, skip: True),  # AdamW(student.parameters()): all
}


def _recipe(key: str):
    return next(v for k, v in RECIPES.items() if key.startswith(k))


def _stand_in(spec: RunSpec) -> torch.nn.Module:
    kwargs = {**spec.model.kwargs, **SMALL}
    return build_model(spec.model.name, spec.strategies, **kwargs)


def _lr(optimizer, scheduler, n: int) -> float:
    scheduler.step(n // U)  # what the loop calls; timm ignores the step kind the schedule does not use
    scheduler.step_update(n)
    lrs = {g["lr"] for g in optimizer.param_groups}
    assert len(lrs) == 1, lrs
    return lrs.pop()


@pytest.mark.parametrize("key", [k for k, s in RUNS.items() if s.train.epochs > 0])
def test_lr_weight_decay_and_decayed_parameters_follow_upstream(key):
    spec = RUNS[key]
    lr_of, wd_of, decays = _recipe(key)
    tc, world = spec.train, spec.resources.num_workers
    model = _stand_in(spec)
    optimizer = recipe.build_optimizer(model, tc, world)
    scheduler = recipe.build_scheduler(optimizer, tc, U)

    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    expected = {id(p) for name, p in model.named_parameters() if decays(name, p, skip)}
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == expected
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))

    total, warm = tc.epochs * U, tc.warmup_epochs * U
    for n in (0, warm, (warm + total) // 2, total - 1):
        assert _lr(optimizer, scheduler, n) == pytest.approx(lr_of(spec, n), rel=1e-9, abs=1e-15), n
        if wd_of is not None:
            assert recipe.weight_decay_at(tc, n, total) == pytest.approx(wd_of(spec, n), rel=1e-12), n
    assert (wd_of is None) == (tc.weight_decay_end is None)


def test_dgmr_warmup_differs_from_upstream_by_one_update_at_most():
    """timm's warmup reaches the peak one update after DINOv2's linspace does (README: the remaining departure)."""
    spec = RUNS[next(k for k in RUNS if k.startswith("configs/dgmr") and ":recovered-" in k)]
    optimizer = recipe.build_optimizer(_stand_in(spec), spec.train, spec.resources.num_workers)
    scheduler = recipe.build_scheduler(optimizer, spec.train, U)
    peak, warm = dgmr_lr(spec, 2 * U), 2 * U
    for n in range(warm):
        assert dgmr_lr(spec, n) - peak / (warm - 1) <= _lr(optimizer, scheduler, n) <= dgmr_lr(spec, n)


def test_dgmr_epochs_follow_the_kept_width():
    # configs/eva/clipe/distill_mse_bf16_1r.yaml (prune1, mlp_ratio 1) 10 epochs, _2r.yaml (prune2) 20
    trained = {(s.condition, s.strategies[0].params.keep_ratio): s.train.epochs
               for k, s in RUNS.items() if k.startswith("configs/dgmr") and s.train.epochs}
    assert trained == {("recovered", 0.25): 10, ("recovered_long", 0.5): 20,
                       ("recovered_first", 0.25): 10, ("recovered_first_long", 0.5): 20}


# every upstream evaluates Resize(bicubic) + CenterCrop
TIMM_TRAIN = dict(rrc_scale=(0.08, 1.0), hflip=0.5, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25,
                  val_interpolation="bicubic")
TRANSFORMS = {
    # seed: timm train.py with vit_base_patch16_224's pretrained cfg (interpolation bicubic, crop 0.9, mean/std
    # 0.5) and timm's default --train-interpolation random; erasing after mixup (its prefetcher); RA x3
    "configs/paper": dict(TIMM_TRAIN, p_bicubic=0.5, crop_pct=0.9, mean=(0.5,) * 3, std=(0.5,) * 3,
                          erase_order="after_mixup", aug_repeats=3),
    # Mini-Swin data/build.py: timm create_transform, bicubic, eval Resize 256 + CenterCrop 224, no RA
    "configs/minivit/mini_swin_style_deit_small.yaml": dict(
        TIMM_TRAIN, p_bicubic=1.0, crop_pct=0.875, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        erase_order="per_image", aug_repeats=1),
    # DeiT datasets.py: create_transform bicubic, eval crop ratio 0.875, RASampler x3
    "configs/deit_distill": dict(TIMM_TRAIN, p_bicubic=1.0, crop_pct=0.875, mean=(0.485, 0.456, 0.406),
                                 std=(0.229, 0.224, 0.225), erase_order="per_image", aug_repeats=3),
    # Mini-DeiT datasets.py: DeiT's build_transform (bicubic, eval crop 0.875), RASampler x3
    "configs/minivit/mini_deit_": dict(TIMM_TRAIN, p_bicubic=1.0, crop_pct=0.875, mean=(0.485, 0.456, 0.406),
                                       std=(0.229, 0.224, 0.225), erase_order="per_image", aug_repeats=3),
    # EVA-CLIP transform.py image_transform(is_train): RandomResizedCrop(scale (0.9, 1), bicubic), nothing else
    "configs/dgmr": dict(rrc_scale=(0.9, 1.0), hflip=0.0, auto_augment=None, reprob=0.0, p_bicubic=1.0,
                         aug_repeats=1, val_interpolation="bicubic"),
}


@pytest.mark.parametrize("key", list(RUNS))
def test_train_and_eval_transforms_follow_upstream(key):
    d = RUNS[key].data
    want = next(v for k, v in TRANSFORMS.items() if key.startswith(k))
    got = dict(rrc_scale=d.rrc_scale, hflip=d.hflip, auto_augment=d.auto_augment, reprob=d.reprob,
               p_bicubic=BICUBIC_PROBABILITY[d.train_interpolation], crop_pct=d.crop_pct, mean=d.mean, std=d.std,
               erase_order=d.erase_order, aug_repeats=d.aug_repeats, val_interpolation=d.val_interpolation)
    assert {k: got[k] for k in want} == want
    assert d.rrc_ratio == pytest.approx((3 / 4, 4 / 3))  # every upstream: torchvision/timm's default ratio


def test_configs_name_upstreams_teachers_and_relation_factor():
    deit = [s for k, s in RUNS.items() if k.startswith("configs/deit_distill") and s.distill is not None]
    assert [(s.distill.teacher.init, s.distill.teacher.model, s.distill.loss) for s in deit] == [
        ("pretrained", "regnety_160.deit_in1k", "hard")]  # DeiT main.py --teacher-model regnety_160, hard
    assert {s.checkpoint.best_metric for k, s in RUNS.items() if k.startswith("configs/deit_distill")} == {"top1"}
    swin = RUNS["configs/minivit/mini_swin_style_deit_small.yaml"]
    assert swin.distill.relations.hidden_relation.factor == 49  # main.py cal_hidden_relation_loss
    assert (swin.train.amp_dtype, swin.train.clip_grad) == ("float16", 5.0)  # apex O1, CLIP_GRAD 5.0
    assert {s.train.ema_shared for k, s in RUNS.items() if k.startswith("configs/paper")} == {"per_reference"}


@pytest.mark.parametrize("mode", ["once", "per_reference"])
def test_ema_of_a_shared_weight(mode):
    """per_reference: timm's EMA over state_dict() (the seed's) lerps a tensor shared by two blocks twice per
    update, decay^2; once: one lerp. Unshared weights take one lerp either way."""
    model = build_model("vit_tiny_patch16_224", [{"name": "grouped", "params": {"group_size": 2}}], **SMALL)
    decay = 0.9
    ema = recipe.build_ema(model, TrainConfig(ema_decay=decay, ema_shared=mode))
    shared, alone = model.blocks[0].mlp.fc1.weight, model.blocks[0].attn.qkv.weight
    assert model.blocks[1].mlp.fc1.weight is shared
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    ema_params = dict(ema.module.named_parameters())
    d = decay**2 if mode == "per_reference" else decay
    torch.testing.assert_close(ema_params["blocks.0.mlp.fc1.weight"],
                               d * start["blocks.0.mlp.fc1.weight"] + (1 - d) * shared.detach())
    torch.testing.assert_close(ema_params["blocks.0.attn.qkv.weight"],
                               decay * start["blocks.0.attn.qkv.weight"] + (1 - decay) * alone.detach())
    assert ema.module.blocks[1].mlp.fc1.weight is ema.module.blocks[0].mlp.fc1.weight


def test_switch_errors_and_the_logged_rule():
    with pytest.raises(ValueError, match="warmup_prefix: epochs 2 must exceed warmup_epochs 2"):
        TrainConfig(warmup_prefix=True, epochs=2, warmup_epochs=2)
    TrainConfig(warmup_prefix=True, epochs=0, warmup_epochs=2)  # evaluation only: no schedule
    swin = RUNS["configs/minivit/mini_swin_style_deit_small.yaml"].train
    assert swin.lr_rule(8).endswith("stepped per update, warmup_lr 1e-06 and min_lr 1e-05 scaled alike")
