"""iRPE on keys (Mini-DeiT's contextual product encoding) against values worked out by hand, and inside
the multiplexed attention of a real timm ViT."""
from __future__ import annotations

import pytest
import torch

from jobs.models import build_model
from jobs.strategies.irpe import KeyRelativePosition, piecewise_index, product_buckets
from jobs.strategies.multiplexed import MixedAttention

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=10)


def test_piecewise_index_at_ratio_1_9():
    # alpha, beta, gamma = 1.9, 3.8, 15.2: |x| <= 1.9 is kept; beyond, round(1.9 + ln(|x|/1.9) / ln 8 x 1.9)
    # capped at 3.8 and truncated: 2 -> 1.947 -> 2; 3 -> 2.317 -> 2; 4 -> 2.580 -> 3; 13 -> 3.657 -> 4 -> 3.8 -> 3.
    x = torch.arange(-13, 14)
    want = [-3] * 10 + [-2, -2, -1, 0, 1, 2, 2] + [3] * 10
    assert piecewise_index(x, 1.9, 3.8, 15.2).tolist() == want


def test_bucket_ids_of_a_2x2_grid():
    # tokens (0,0) (0,1) (1,0) (1,1); bucket = (row offset + 3) x 7 + (column offset + 3), offsets query - key
    ids, buckets = product_buckets(2, 2)
    assert buckets == 49
    assert ids.tolist() == [[24, 23, 17, 16], [25, 24, 18, 17], [31, 30, 24, 23], [32, 31, 25, 24]]


def test_bucket_ids_of_a_1x5_row_use_the_log_part():
    # column offsets 0, -1, -2, -3, -4 from the first token map to 0, -1, -2, -2, -3 -> 21 + 3 + offset
    ids, _ = product_buckets(1, 5)
    assert ids[0].tolist() == [24, 23, 22, 22, 21]
    assert ids[4].tolist() == [27, 26, 26, 25, 24]


def test_prefix_tokens_read_one_extra_bucket():
    ids, buckets = product_buckets(2, 2, num_prefix_tokens=1)
    assert buckets == 50
    assert ids[0].tolist() == [49] * 5 and ids[:, 0].tolist() == [49] * 5
    assert ids[1:, 1:].tolist() == product_buckets(2, 2)[0].tolist()


def test_contextual_logits_on_keys_by_hand():
    rpe = KeyRelativePosition(head_dim=2, grid=(2, 2))
    assert rpe.lookup_table_weight.shape == (1, 2, 49) and not rpe.lookup_table_weight.any()  # shared, zero init
    with torch.no_grad():
        rpe.lookup_table_weight[0, 0] = torch.arange(49.0)  # r_b = (b, -1)
        rpe.lookup_table_weight[0, 1] = -1.0
    q = torch.zeros(1, 2, 4, 2)  # (batch, heads, tokens, head_dim)
    q[0, 0, 0] = torch.tensor([1.0, 0.0])   # head 0, query 0: q . r_b = b
    q[0, 1, 3] = torch.tensor([2.0, 3.0])   # head 1, query 3: 2b - 3
    out = rpe(q)
    assert out.shape == (1, 2, 4, 4)
    assert out[0, 0, 0].tolist() == [24.0, 23.0, 17.0, 16.0]
    assert out[0, 1, 3].tolist() == [61.0, 59.0, 47.0, 45.0]
    assert not out[0, 0, 1:].any() and not out[0, 1, :3].any()


def test_multiplexed_attention_adds_the_encoding_to_the_scaled_logits():
    torch.manual_seed(0)
    net = build_model("vit_tiny_patch16_224", [{"name": "multiplexed", "params": {"rpe": "contextual"}}],
                      class_token=False, global_pool="avg", **SMALL).eval()
    attn = net.blocks[1].attn
    assert isinstance(attn, MixedAttention) and attn.rpe_k is not net.blocks[0].attn.rpe_k  # one per layer
    assert attn.qkv is net.blocks[0].attn.qkv
    with torch.no_grad():
        attn.rpe_k.lookup_table_weight.normal_()
    x = torch.randn(2, 16, 32)
    seen = {}
    attn.pre_mix.register_forward_hook(lambda m, inp, out: seen.setdefault("logits", inp[0]))
    attn(x)
    q, k, _ = attn.qkv(x).reshape(2, 16, 3, 2, 16).permute(2, 0, 3, 1, 4)
    q = q * attn.scale
    ids = attn.rpe_k.bucket_ids
    table = attn.rpe_k.lookup_table_weight[0]  # (head_dim, buckets)
    i, j = 5, 10  # tokens (1, 1) and (2, 2) of the 4x4 grid: offsets (-1, -1) -> bucket 16
    assert ids[i, j] == 16
    want = q[1, 1, i] @ k[1, 1, j] + q[1, 1, i] @ table[:, 16]
    assert seen["logits"][1, 1, i, j].item() == pytest.approx(want.item(), rel=1e-5)


def test_zero_init_starts_as_the_model_without_encoding():
    kw = dict(class_token=False, global_pool="avg", **SMALL)
    torch.manual_seed(0)
    plain = build_model("vit_tiny_patch16_224", [{"name": "multiplexed"}], **kw).eval()
    torch.manual_seed(0)
    with_rpe = build_model("vit_tiny_patch16_224", [{"name": "multiplexed", "params": {"rpe": "contextual"}}], **kw)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(with_rpe.eval()(x), plain(x))
    assert not any("bucket_ids" in k for k in with_rpe.state_dict())  # derived from the grid, not saved
