"""MiniViT relation losses: hand-computed values, hooks on real timm ViTs, prefix tokens, validation."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from jobs.distill.relations import (
    LayerCapture,
    RelationConfig,
    RelationDistiller,
    attn_relation_loss,
    hidden_relation_loss,
    soft_cross_entropy,
)
from jobs.models import build_model, model_shape

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=10)


def small(strategies=(), seed=0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("vit_tiny_patch16_224", strategies, **{**SMALL, **kw}).eval()


def images(n=2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ---- hand values ---------------------------------------------------------------------------------


def test_soft_cross_entropy_is_minivit_softce():
    # s = [0, 0], t = [0, ln 3]: −(1/4 ln 1/2 + 3/4 ln 1/2) = ln 2, a cross-entropy, not a KL
    assert soft_cross_entropy(torch.zeros(1, 2), torch.tensor([[0.0, math.log(3)]])).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("tokens, heads", [(5, 1), (7, 2)])
def test_zero_qkv_gives_ln_n(tokens, heads):
    zeros = [torch.zeros(2, tokens, 3 * 8)] * 3
    teacher = [torch.zeros(2, tokens, 3 * 16)] * 3  # teacher wider than the student
    assert attn_relation_loss(zeros, teacher, heads).item() == pytest.approx(math.log(tokens))


def test_attn_relation_hand_value():
    # C = 1, N = 2, student q = k = v = [[a], [0]] with a² = ln 3 (scale sqrt(C) = 1): every R_ij = [[ln 3, 0], [0, 0]].
    # Teacher all zero: uniform targets. Row 0: −½(ln ¾ + ln ¼); row 1: ln 2. Every pair alike.
    a = math.sqrt(math.log(3))
    student = torch.tensor([[[a, a, a], [0.0, 0.0, 0.0]]])
    teacher = torch.zeros(1, 2, 3)
    want = (-(math.log(0.75) + math.log(0.25)) / 2 + math.log(2)) / 2
    assert attn_relation_loss([student], [teacher]).item() == pytest.approx(want)
    # averaged over layers: a second layer with loss ln 2 (student zero too) halves the difference
    both = attn_relation_loss([student, teacher], [teacher, teacher]).item()
    assert both == pytest.approx((want + math.log(2)) / 2)


def test_hidden_relation_hand_values():
    x = torch.randn(2, 6, 8)
    assert hidden_relation_loss([x], [3 * x]).item() == pytest.approx(0.0, abs=1e-7)  # cosines ignore the scale
    s = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # orthogonal tokens: cosine matrix I
    t = torch.tensor([[[1.0, 0.0, 0.0], [5.0, 0.0, 0.0]]])  # parallel tokens (other width): all ones
    assert hidden_relation_loss([s], [t]).item() == pytest.approx(0.5)  # mean of [[0, 1], [1, 0]]
    assert hidden_relation_loss([s], [t], factor=49).item() == pytest.approx(24.5)


# ---- capture with hooks ----------------------------------------------------------------------------


def test_capture_counts_every_use_of_a_shared_block():
    net = small([{"name": "multiplexed", "params": {"share_every": 2}}])
    seen = {}
    net.blocks[1].norm1.register_forward_hook(lambda m, i, o: seen.update(x=o))
    capture = LayerCapture(net, [1, 0, 3], drop_prefix=False)
    with torch.no_grad():
        net(images())
    q1, q0, q3 = capture.qkv_outputs()
    assert torch.allclose(q1, net.blocks[1].attn.qkv(seen["x"]))  # shared qkv, attributed to layer use 1
    assert not torch.allclose(q1, q0)
    assert q3.shape == (2, 17, 96)
    # A whole block used twice is two layer uses.
    twice = small(depth=2)
    twice.blocks = nn.Sequential(twice.blocks[0], twice.blocks[1], twice.blocks[0])
    capture = LayerCapture(twice, [0, 2], drop_prefix=False)
    with torch.no_grad():
        twice(images())
    h0, h2 = capture.hidden_states()
    assert h0.shape == h2.shape and not torch.allclose(h0, h2)
    capture.remove()
    twice(images())
    assert not capture.hidden


def test_prefix_tokens_dropped_by_default_and_kept_on_request():
    student = small([{"name": "multiplexed", "params": {"mlp_transform": "dwconv"}}], class_token=False,
                    global_pool="avg")  # Mini-DeiT style: 16 patch tokens, no class token
    teacher = small(seed=1, reg_tokens=2)  # class token + 2 register tokens
    cfg = RelationConfig.model_validate({"hidden_relation": {"weight": 0.1, "factor": 49},
                                         "layers": {"student": [3, 1], "teacher": [3, 1]}})
    distiller = RelationDistiller(cfg, student, teacher)
    x = images()
    out = student(x)
    with torch.no_grad():
        teacher(x)
    losses = distiller.losses()
    assert [q.shape for q in distiller.teacher.qkv_outputs()] == [(2, 16, 96)] * 2
    assert set(losses) == {"attn_relation", "hidden_relation"} and all(v > 0 for v in losses.values())
    (sum(losses.values()) + out.sum()).backward()
    assert student.blocks[0].attn.qkv.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    # Validation: counts compared on patch tokens by default, on all tokens with keep.
    s_shape = model_shape("vit_tiny_patch16_224", **SMALL, class_token=False, global_pool="avg")
    t_shape = model_shape("vit_tiny_patch16_224", **SMALL, reg_tokens=2)
    assert cfg.check(s_shape, t_shape) == []
    keep = cfg.model_copy(update={"prefix_tokens": "keep"})
    assert keep.check(s_shape, t_shape) == [
        "distill.relations: relations need equal token counts, but vit_tiny_patch16_224 has 16 and "
        "vit_tiny_patch16_224 19 (keep prefix tokens); use the same patch grid (or prefix_tokens: drop)"
    ]


def test_identical_models_give_zero_hidden_relation_and_entropy_attn_relation():
    student, teacher = small(seed=2), small(seed=2)
    distiller = RelationDistiller(RelationConfig(), student, teacher)
    with torch.no_grad():
        student(images())
        teacher(images())
        losses = distiller.losses()
    assert losses["hidden_relation"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["attn_relation"].item() > 0  # softCE of equal distributions is their entropy, not 0


def test_defaults_and_validation_errors_at_once():
    cfg = RelationConfig()
    assert (cfg.attn_relation.weight, cfg.attn_relation.relation_heads) == (1.0, 1)
    assert (cfg.hidden_relation.weight, cfg.hidden_relation.factor) == (0.1, 49.0)
    assert cfg.resolve_layers(12, 12) == ([11, 9, 7, 5, 3, 1], [11, 9, 7, 5, 3, 1])
    assert cfg.resolve_layers(12, 24) == ([11, 9, 7, 5, 3, 1], [23, 19, 15, 11, 7, 3])
    student = model_shape("deit_small_patch16_224")
    teacher = model_shape("deit_base_patch16_384")
    bad = RelationConfig.model_validate({"attn_relation": {"relation_heads": 5},
                                         "layers": {"student": [12, 3], "teacher": [1]}})
    errors = bad.check(student, teacher)
    assert len(errors) == 5 and all("\n" not in e for e in errors)
    text = "\n".join(errors)
    assert "layers.student: [12] out of range for deit_small_patch16_224, which has 12 layer uses (0..11)" in text
    assert "2 student and 1 teacher layers" in text
    assert "has 196 and deit_base_patch16_384 576" in text
    assert "relation_heads: 5 does not divide the student width 384" in text
    assert "teacher width 768" in text
