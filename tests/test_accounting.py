"""Compute accounting is a property of the architecture: the same on every device and attention kernel."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from jobs.accounting import count_macs
from jobs.inspect import main as inspect_main


def _vit(device: str, fused: bool):
    with torch.device(device):
        net = timm.create_model("vit_small_patch16_224", num_classes=10)
    for block in net.blocks:
        block.attn.fused_attn = fused  # timm picks F.scaled_dot_product_attention or explicit q@k^T, attn@v
    return net


def _attention_macs(depth: int, tokens: int, width: int) -> int:
    # QK^T and AV: tokens x tokens x head_dim each, per head; heads x head_dim = width.
    return depth * 2 * tokens * tokens * width


@pytest.mark.parametrize("device,fused", [("meta", True), ("meta", False), ("cpu", True), ("cpu", False)])
def test_macs_same_on_meta_and_cpu_with_fused_and_explicit_attention(device, fused):
    total, without_attention = count_macs(_vit(device, fused), 224)
    attention = total - without_attention
    assert attention == _attention_macs(depth=12, tokens=197, width=384)
    # the layers' own matmuls (patch embedding, qkv, proj, MLP, head) do not depend on the kernel either
    reference_total, reference_rest = count_macs(_vit("meta", False), 224)
    assert (total, without_attention) == (reference_total, reference_rest)


@pytest.mark.parametrize("backend", [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION])
def test_macs_same_for_every_cpu_sdpa_backend(backend):
    net = _vit("cpu", fused=True)
    with sdpa_kernel(backend):
        total, rest = count_macs(net, 224)
    assert total - rest == _attention_macs(depth=12, tokens=197, width=384)


def test_inspect_gives_11_99_gmacs_for_every_shallow_selection_of_vit_b16(capsys):
    # all three are counted on the meta device (shapes_only: the selection changes which units, not how many).
    selections = ("first", "magnitude", "diversity")
    argv = ["--model", "vit_base_patch16_224", "--format", "json"]
    for s in selections:
        argv += ["--strategy", f"shallow:select={s}"]
    assert inspect_main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["strategy"] for r in rows] == [f"shallow:select={s}" for s in selections]
    assert [round(r["gmacs"], 2) for r in rows] == [11.99, 11.99, 11.99]
    assert [round(r["gflops"], 2) for r in rows] == [11.27, 11.27, 11.27]
    assert len({r["gmacs"] for r in rows}) == 1
