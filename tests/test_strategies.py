"""Strategies on timm ViTs, with exact accounting."""
from __future__ import annotations

import copy
import dataclasses
import io
import json
import math

import numpy as np
import pytest
import timm
import torch

from jobs.accounting import model_stats
from jobs.models import build_model, check
from jobs.strategies import STRATEGIES, StrategyError, get_strategy, parse_expression, parse_params
from jobs.strategies.grouped import GroupedParams
from jobs.strategies.shallow import ShallowParams, select_diversity, select_magnitude

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=10)


def small(strategies=(), seed=0, **kw):
    torch.manual_seed(seed)
    return build_model("vit_tiny_patch16_224", strategies, **{**SMALL, **kw})


# ---- ViT-B/16 reproduces the seed's architecture table ------------------------------------------

@pytest.mark.parametrize(
    "strategies, params, mlp_params, unique, hidden",
    [
        ([], 86_567_656, 56_669_184, 12, 3072),
        (["grouped"], 58_233_064, 28_334_592, 6, 3072),
        (["shallow"], 58_237_672, 28_339_200, 12, 1536),
        ([{"name": "thin", "params": {"mlp_ratio": 2.0}}], 58_237_672, 28_339_200, 12, 1536),
    ],
)
def test_vit_b16_counts_match_seed(strategies, params, mlp_params, unique, hidden):
    with torch.device("meta"):
        net = build_model("vit_base_patch16_224", strategies)
    stats = model_stats(net)
    assert (stats.params, stats.mlp_params, stats.unique_mlps, stats.mlp_hidden) == (params, mlp_params, unique, hidden)
    assert round(stats.params / 1e6, 1) in (86.6, 58.2)
    assert round(stats.mlp_params / 1e6, 1) in (56.7, 28.3)


def test_vit_b16_compute_conventions():
    with torch.device("meta"):
        base, grouped, shallow = (model_stats(build_model("vit_base_patch16_224", s))
                                  for s in ([], ["grouped"], ["shallow"]))
    # timm's model card: 17.58 GMACs; the paper's table: 16.9 and 11.3 (attention matmuls excluded)
    assert base.gmacs == pytest.approx(17.58, abs=0.05)
    assert base.gflops == pytest.approx(16.9, abs=0.06)
    assert grouped.gflops == base.gflops and grouped.gmacs == base.gmacs
    assert shallow.gflops == pytest.approx(11.3, abs=0.05)
    assert shallow.gmacs == pytest.approx(12.0, abs=0.05)


# ---- grouped --------------------------------------------------------------------------------------

def test_grouped_shares_parameter_objects_and_optimizer_sees_each_once():
    net = small(["grouped"])
    b = net.blocks
    assert b[0].mlp is b[1].mlp and b[2].mlp is b[3].mlp and b[0].mlp is not b[2].mlp
    assert b[0].mlp.fc1.weight.data_ptr() == b[1].mlp.fc1.weight.data_ptr()
    opt = torch.optim.AdamW(net.parameters())
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == model_stats(net).params
    baseline = model_stats(small()).params
    one_mlp = sum(p.numel() for p in b[0].mlp.parameters())
    assert model_stats(net).params == baseline - 2 * one_mlp


def test_grouped_gradient_accumulates_from_both_blocks():
    tied = small(["grouped"])
    untied = copy.deepcopy(tied)
    for i in (1, 3):
        untied.blocks[i].mlp = copy.deepcopy(untied.blocks[i].mlp)  # same values, own parameters
    x = torch.randn(2, 3, 32, 32)
    tied.eval(), untied.eval()
    tied(x).sum().backward()
    untied(x).sum().backward()
    expected = untied.blocks[0].mlp.fc1.weight.grad + untied.blocks[1].mlp.fc1.weight.grad
    torch.testing.assert_close(tied.blocks[0].mlp.fc1.weight.grad, expected)
    assert not torch.allclose(untied.blocks[0].mlp.fc1.weight.grad, expected)


def test_grouped_scaling_matches_hand_computation():
    full = small()
    with torch.no_grad():  # timm inits biases to zero: make them non-zero so their scaling is visible
        for blk in full.blocks:
            blk.mlp.fc1.bias.normal_()
            blk.mlp.fc2.bias.normal_()
    ref = copy.deepcopy(full)
    out = get_strategy("grouped").apply(full, GroupedParams(group_size=2, scale=0.707))
    for start in (0, 2):
        src, mlp = ref.blocks[start].mlp, out.blocks[start].mlp
        torch.testing.assert_close(mlp.fc1.weight, src.fc1.weight * 0.707)
        torch.testing.assert_close(mlp.fc1.bias, src.fc1.bias * 0.707)
        torch.testing.assert_close(mlp.fc2.weight, src.fc2.weight * 0.707)
        torch.testing.assert_close(mlp.fc2.bias, src.fc2.bias)  # b_fc2 is not scaled (the seed's rule)
    default = get_strategy("grouped").apply(copy.deepcopy(ref), GroupedParams(group_size=4))
    torch.testing.assert_close(default.blocks[3].mlp.fc1.weight, ref.blocks[0].mlp.fc1.weight / math.sqrt(4))


def test_grouped_shared_weights_stored_once_in_checkpoint():
    def size(net):
        buf = io.BytesIO()
        torch.save(net.state_dict(), buf)
        return buf.tell()

    base, grouped = small(), small(["grouped"])
    one_mlp = sum(p.numel() for p in base.blocks[0].mlp.parameters()) * 4  # fp32 bytes
    assert size(base) - size(grouped) == pytest.approx(2 * one_mlp, rel=0.05)


# ---- shallow --------------------------------------------------------------------------------------

def test_shallow_first_slices_exactly():
    ref = small()
    out = get_strategy("shallow").apply(copy.deepcopy(ref), ShallowParams(keep_ratio=0.25))
    k = int(ref.blocks[0].mlp.fc1.out_features * 0.25)
    for a, b in zip(ref.blocks, out.blocks):
        torch.testing.assert_close(b.mlp.fc1.weight, a.mlp.fc1.weight[:k])
        torch.testing.assert_close(b.mlp.fc1.bias, a.mlp.fc1.bias[:k])
        torch.testing.assert_close(b.mlp.fc2.weight, a.mlp.fc2.weight[:, :k])
        torch.testing.assert_close(b.mlp.fc2.bias, a.mlp.fc2.bias)
        assert (b.mlp.fc1.out_features, b.mlp.fc2.in_features) == (k, k)
        assert f"out_features={k}" in repr(b.mlp.fc1)


@pytest.mark.parametrize("select", ["first", "magnitude", "diversity"])
def test_shallow_equals_full_model_when_pruned_units_are_silent(select):
    full = small()
    with torch.no_grad():
        for blk in full.blocks:
            blk.mlp.fc1.bias.normal_()
    keep_ratio = 0.5
    kept = []
    for blk in full.blocks:
        w1, w2 = blk.mlp.fc1.weight, blk.mlp.fc2.weight
        k = int(w1.shape[0] * keep_ratio)
        idx = {"first": lambda: torch.arange(k), "magnitude": lambda: select_magnitude(w1, w2, k),
               "diversity": lambda: select_diversity(w1, w2, k)}[select]()
        kept.append(torch.sort(idx).values)
        mask = torch.ones(w1.shape[0], dtype=torch.bool)
        mask[idx] = False
        with torch.no_grad():
            w2[:, mask] = 0.0  # the units to be pruned contribute nothing
    pruned = get_strategy("shallow").apply(copy.deepcopy(full), ShallowParams(keep_ratio=keep_ratio, select=select))
    for blk, full_blk, idx in zip(pruned.blocks, full.blocks, kept):
        torch.testing.assert_close(blk.mlp.fc1.weight, full_blk.mlp.fc1.weight[idx])  # original order kept
    x = torch.randn(3, 3, 32, 32)
    full.eval(), pruned.eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), full(x), rtol=1e-5, atol=1e-5)


def test_diversity_picks_expected_rows_on_hand_built_matrix():
    w1 = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 2, 0], [0, 0, 0.5], [3, 0, 0]])
    w2 = torch.ones(3, 5)
    # round 1: 4 (norm 3) -> 2 (residual 2) -> 3 (0.5); rank 3 reached. Round 2 over {0, 1}: 0 (1.0) -> 1.
    assert select_diversity(w1, w2, 1).tolist() == [4]
    assert select_diversity(w1, w2, 3).tolist() == [4, 2, 3]
    assert select_diversity(w1, w2, 4).tolist() == [4, 2, 3, 0]
    assert sorted(select_diversity(w1, w2, 5).tolist()) == [0, 1, 2, 3, 4]


def _greedy_reference(w: np.ndarray, k: int) -> list[int]:
    """DGMR as written: pick the largest residual, project it out of every row; new round at rank."""
    chosen, remaining = [], list(range(len(w)))
    while len(chosen) < k:
        res = w[remaining].copy()
        for _ in range(min(w.shape[1], k - len(chosen))):
            norms = np.linalg.norm(res, axis=1)
            j = int(np.argmax(norms))
            if norms[j] < 1e-9:
                break
            q = res[j] / norms[j]
            res -= np.outer(res @ q, q)
            chosen.append(remaining[j])
            res[j] = 0.0
        remaining = [r for r in remaining if r not in chosen]
    return chosen


def test_diversity_matches_loop_reference_across_rounds():
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(40, 8)) * rng.uniform(0.2, 3.0, size=(40, 1))
    got = select_diversity(torch.from_numpy(w1), torch.ones(8, 40), 20).tolist()
    assert got == _greedy_reference(w1, 20)  # 20 > 8 input dims: three rounds


# ---- thin, composition ----------------------------------------------------------------------------

def test_thin_is_created_small():
    net = small([{"name": "thin", "params": {"mlp_ratio": 2.0}}])
    assert net.blocks[0].mlp.fc1.out_features == 64


@pytest.mark.parametrize("order", [["grouped", "shallow"], ["shallow", "grouped"]])
def test_composition_keeps_sharing_and_pruning(order):
    net = small(order)
    assert net.blocks[0].mlp is net.blocks[1].mlp
    assert net.blocks[0].mlp.fc1.out_features == 64
    stats = model_stats(net)
    assert (stats.unique_mlps, stats.mlp_hidden) == (2, 64)
    assert stats.mlp_params == 2 * (32 * 64 + 64 + 64 * 32 + 32)
    net(torch.randn(1, 3, 32, 32)).sum().backward()


def test_expression_parsing():
    specs = parse_expression("grouped:scale=0.5+shallow:keep_ratio=0.25:select=diversity")
    assert [(s.name, s.params) for s in specs] == [
        ("grouped", GroupedParams(scale=0.5)), ("shallow", ShallowParams(keep_ratio=0.25, select="diversity"))]
    # typed once: the written form is the mapping as given
    assert [s.model_dump(mode="json") for s in specs] == [
        {"name": "grouped", "params": {"scale": 0.5}},
        {"name": "shallow", "params": {"keep_ratio": 0.25, "select": "diversity"}}]


def test_params_are_typed_once_and_apply_gets_the_typed_object(monkeypatch):
    from jobs.models import needs_weights
    from jobs.strategies import StrategySpec, registry

    specs = parse_expression("grouped:group_size=2+shallow:keep_ratio=0.5:select=magnitude")
    assert isinstance(specs[0].params, GroupedParams) and isinstance(specs[1].params, ShallowParams)
    assert StrategySpec(name="thin").params == get_strategy("thin").params()  # defaults when none given
    seen = []
    grouped = get_strategy("grouped")

    def spy(net, params):
        seen.append(params)
        return grouped.apply(net, params)

    monkeypatch.setitem(registry.STRATEGIES, "grouped", dataclasses.replace(grouped, apply=spy))

    def no_revalidation(*_):
        raise AssertionError("parameters validated again")

    monkeypatch.setattr(registry, "parse_params", no_revalidation)
    torch.manual_seed(0)
    net = build_model("vit_tiny_patch16_224", specs, **SMALL)
    assert seen == [specs[0].params] and seen[0] is specs[0].params
    assert check("vit_tiny_patch16_224", specs, **SMALL) == [] and needs_weights(specs)
    assert net.blocks[0].mlp is net.blocks[1].mlp and net.blocks[0].mlp.fc1.out_features == 64


# ---- bad parameters -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "strategies, message",
    [
        (["nope"], "unknown strategy 'nope': valid choices are baseline, grouped, multiplexed, shallow, thin"),
        ([{"name": "grouped", "params": {"group_size": 0}}], "strategy grouped: group_size input should be greater than or equal to 1 (got 0)"),
        ([{"name": "grouped", "params": {"group_size": 5}}], "strategy grouped: depth 4 of vit_tiny_patch16_224 is not divisible by group_size 5; choose a group_size that divides 4"),
        ([{"name": "grouped", "params": {"gsize": 2}}], "strategy grouped: unknown parameter 'gsize' (valid: group_size, scale, init)"),
        ([{"name": "shallow", "params": {"keep_ratio": 0}}], "strategy shallow: keep_ratio input should be greater than 0 (got 0)"),
        ([{"name": "shallow", "params": {"keep_ratio": 1.5}}], "strategy shallow: keep_ratio input should be less than or equal to 1 (got 1.5)"),
        ([{"name": "shallow", "params": {"keep_ratio": 0.001}}], "strategy shallow: keep_ratio 0.001 keeps no unit of vit_tiny_patch16_224's 128 hidden units; use keep_ratio >= 0.00781"),
        ([{"name": "shallow", "params": {"select": "random"}}], "strategy shallow: select input should be 'first', 'magnitude' or 'diversity' (got 'random')"),
        ([{"name": "thin", "params": {"mlp_ratio": -1}}], "strategy thin: mlp_ratio input should be greater than 0 (got -1)"),
    ],
)
def test_bad_parameters_are_reported_in_one_line(strategies, message):
    errors = check("vit_tiny_patch16_224", strategies, **SMALL)
    assert errors == [message]
    with pytest.raises(StrategyError) as exc:
        small(strategies)
    assert "\n" not in str(exc.value)


def test_all_errors_reported_at_once_and_non_vit_rejected():
    errors = check("vit_tiny_patch16_224", ["nope", {"name": "grouped", "params": {"group_size": 3}}], **SMALL)
    assert len(errors) == 2
    assert check("resnet18", ["grouped"]) == [
        "ResNet has no `blocks` list: strategies apply to timm VisionTransformer models"]
    # a creation-time strategy too: not timm's complaint about the mlp_ratio kwarg it adds
    assert check("resnet18", [{"name": "thin", "params": {"mlp_ratio": 2}}]) == [
        "ResNet has no `blocks` list: strategies apply to timm VisionTransformer models"]
    assert check("vit_bse_patch16_224")[0].startswith("model 'vit_bse_patch16_224' is not a timm model name; did you mean vit_base_patch16_224")


def test_registry_lists_every_strategy_with_typed_params():
    assert {"baseline", "grouped", "shallow", "thin"} <= set(STRATEGIES)
    assert parse_params("grouped", {}).resolved_scale == pytest.approx(1 / math.sqrt(2))


# ---- CLIs ----------------------------------------------------------------------------------------

def test_inspect_cli_json(capsys):
    from jobs.inspect import main

    assert main(["--model", "vit_base_patch16_224", "--strategy", "baseline", "--strategy", "grouped",
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["params"], r["unique_mlps"]) for r in rows] == [(86_567_656, 12), (58_233_064, 6)]
    assert main(["--strategy", "grouped:group_size=5"]) == 2
    assert "not divisible by group_size 5" in capsys.readouterr().err


def test_bench_reports_ratios_and_mac_bound():
    from jobs.bench import format_result, run_bench

    res = run_bench("vit_tiny_patch16_224", ["baseline", "shallow"], batch_size=2, rounds=2, iters=1, warmup=1)
    base, shallow = res["results"]
    assert base["ratio"] == base["cpu_ratio"] == base["mac_ratio"] == 1.0 and base["img_s"] > 0 < base["cpu_img_s"]
    assert shallow["mac_ratio"] > 1.3 and shallow["img_s"] > 0
    assert "MAC ratio" in format_result(res)


def test_timm_still_creates_strategy_free_models():
    # build_model is a thin layer over timm: with no strategy it is timm's model
    torch.manual_seed(0)
    a = timm.create_model("vit_tiny_patch16_224", **SMALL)
    b = small()
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
