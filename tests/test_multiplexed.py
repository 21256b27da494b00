"""multiplexed (MiniViT weight multiplexing) on real timm ViTs: sharing, mixes, counts, checks, checkpoints."""
from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from jobs.accounting import model_stats
from jobs.checkpoint_files import load_model_state, pack_state
from jobs.models import build_model, check
from jobs.spec import SpecError, load_spec
from jobs.strategies import StrategyError, parse_expression, parse_params
from jobs.strategies.multiplexed import MixedAttention

MINIVIT = Path(__file__).resolve().parents[1] / "configs" / "minivit"
SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=10)


def mux(**params) -> dict:
    return {"name": "multiplexed", "params": params}


def small(strategies=(), seed=0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("vit_tiny_patch16_224", strategies, **{**SMALL, **kw}).eval()


def images(n=3, seed=1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ---- counts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, share_every, params, unique", [
    ("deit_base_patch16_224", 2, 44_062_312, 6),
    ("deit_small_patch16_224", 2, 11_413_960, 6),
    ("deit_tiny_patch16_224", 2, 3_053_056, 6),
    ("deit_base_patch16_224", 12, 8_638_312, 1),
])
def test_minivit_parameter_counts(model, share_every, params, unique):
    with torch.device("meta"):
        net = build_model(model, [mux(share_every=share_every, attn_mix="conv1x1")])
        base = build_model(model)
    stats, base_stats = model_stats(net), model_stats(base)
    assert (stats.params, stats.unique_mlps, stats.unique_attn) == (params, unique, unique)
    assert (base_stats.unique_mlps, base_stats.unique_attn) == (12, 12)
    # Two H x H mixes per layer on the (H, N, N) map: their MACs are in both compute columns.
    heads, tokens = base.blocks[0].attn.num_heads, base.patch_embed.num_patches + 1
    mix_gmacs = 12 * 2 * heads * heads * tokens * tokens / 1e9
    assert stats.gflops == pytest.approx(base_stats.gflops + mix_gmacs, rel=1e-9)
    assert stats.gmacs == pytest.approx(base_stats.gmacs + mix_gmacs, rel=1e-9)


def test_inspect_prints_the_counts(capsys):
    from jobs.inspect import main

    assert main(["--model", "deit_base_patch16_224", "--strategy", "multiplexed:share_every=2:attn_mix=conv1x1",
                 "--strategy", "multiplexed:share_every=12", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["params"], r["unique_mlps"], r["unique_attn"]) for r in rows] == [(44_062_312, 6, 6), (8_638_312, 1, 1)]
    assert main(["--model", "deit_tiny_patch16_224", "--strategy", "multiplexed"]) == 0
    table = capsys.readouterr().out
    assert "| Unique MLPs | Unique Attn |" in table and "multiplexed | 3.05M | 1.8M | 6 | 6 |" in table


def test_mix_kinds_and_dwconv_counts():
    dim, heads, depth = SMALL["embed_dim"], SMALL["num_heads"], SMALL["depth"]
    none = model_stats(small([mux(attn_mix="none")])).params
    assert model_stats(small([mux(attn_mix="conv1x1")])).params == none + depth * 2 * heads * heads
    assert model_stats(small([mux(attn_mix="linear")])).params == none + depth * 2 * (heads * heads + heads)
    kw = dict(class_token=False, global_pool="avg")
    plain = model_stats(small([mux(attn_mix="none")], **kw)).params
    dw = model_stats(small([mux(attn_mix="none", mlp_transform="dwconv")], **kw)).params
    assert dw == plain + depth * (2 * dim + dim * 49 + dim)  # LayerNorm + depth-wise 7x7 conv with bias


# ---- sharing ------------------------------------------------------------------------------------


def _untied(model: nn.Module) -> nn.Module:
    """A copy in which every block owns its qkv, proj and MLP (same values)."""
    copy_ = copy.deepcopy(model)
    for block in copy_.blocks:
        block.attn.qkv, block.attn.proj = copy.deepcopy(block.attn.qkv), copy.deepcopy(block.attn.proj)
        block.mlp = copy.deepcopy(block.mlp)
    return copy_


def test_sharing_is_real_and_gradients_add_up():
    net = small([mux(share_every=2)])
    b = net.blocks
    for i, j in ((0, 1), (2, 3)):
        assert b[i].attn.qkv.weight is b[j].attn.qkv.weight
        assert b[i].attn.proj.weight is b[j].attn.proj.weight and b[i].mlp is b[j].mlp
    assert b[0].attn.qkv is not b[2].attn.qkv and b[0].mlp is not b[2].mlp
    # one optimizer entry per shared tensor
    assert len(list(net.parameters())) < len(list(net.named_parameters(remove_duplicate=False)))

    untied = _untied(net)
    x = images()
    net(x).square().sum().backward()
    untied(x).square().sum().backward()
    u = untied.blocks
    for name in ("attn.qkv.weight", "attn.proj.bias", "mlp.fc1.weight", "mlp.fc2.weight"):
        shared = b[0].get_parameter(name).grad
        summed = u[0].get_parameter(name).grad + u[1].get_parameter(name).grad
        assert torch.allclose(shared, summed, rtol=1e-4, atol=1e-6), name
        assert not torch.allclose(shared, u[0].get_parameter(name).grad, rtol=1e-3, atol=1e-6), name


def test_per_layer_modules_stay_distinct():
    base = small(drop_path_rate=0.1, init_values=1e-5)
    net = small([mux(share_every=4)], drop_path_rate=0.1, init_values=1e-5)
    for i in range(1, 4):
        for name in ("norm1.weight", "norm2.weight", "ls1.gamma", "ls2.gamma", "attn.pre_mix.weight",
                     "attn.post_mix.weight"):
            assert net.blocks[i].get_parameter(name) is not net.blocks[0].get_parameter(name), name
        assert net.blocks[i].attn is not net.blocks[0].attn
        assert net.blocks[i].drop_path1.drop_prob == base.blocks[i].drop_path1.drop_prob > 0


def test_mean_init_averages_each_group():
    base = small()
    net = small([mux(share_every=2, init="mean")])
    for start in (0, 2):
        for name in ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.bias", "mlp.fc2.weight"):
            want = (base.blocks[start].get_parameter(name) + base.blocks[start + 1].get_parameter(name)) / 2
            assert torch.allclose(net.blocks[start].get_parameter(name), want)
    first = small([mux(share_every=2, init="first")])
    assert torch.equal(first.blocks[1].attn.qkv.weight, base.blocks[0].attn.qkv.weight)


# ---- the attention rewrite ----------------------------------------------------------------------


def _mix_maps(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen = {}
    attn = net.blocks[1].attn
    hooks = [attn.pre_mix.register_forward_hook(lambda m, i, o: seen.update(pre_in=i[0], pre_out=o)),
             attn.post_mix.register_forward_hook(lambda m, i, o: seen.update(post_in=i[0], post_out=o))]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("attn_mix", ["conv1x1", "linear"])
def test_post_softmax_mix_runs_after_softmax(attn_mix):
    net = small([mux(attn_mix=attn_mix)])
    assert isinstance(net.blocks[1].attn, MixedAttention) and net.blocks[1].attn.fused_attn is False
    maps = _mix_maps(net, images())
    ones = torch.ones(maps["post_in"].shape[:-1])
    assert torch.allclose(maps["post_in"].sum(-1), ones, atol=1e-5)  # the mix sees probabilities
    assert not torch.allclose(maps["post_out"].sum(-1), ones, atol=1e-2)  # and its output rows no longer sum to 1
    assert not torch.allclose(maps["pre_in"].sum(-1), ones, atol=1e-2)  # the pre-mix sees raw scores
    identity = _mix_maps(small([mux(attn_mix=attn_mix, mix_init="identity")]), images())
    assert torch.allclose(identity["post_out"], identity["post_in"])


@pytest.mark.parametrize("attn_mix", ["conv1x1", "linear"])
def test_identity_mixes_without_sharing_reproduce_the_model(attn_mix):
    base = small(seed=3)
    net = small([mux(share_every=1, attn_mix=attn_mix, mix_init="identity")], seed=3)
    assert base.blocks[0].attn.fused_attn is True  # the reference uses timm's fused kernel
    x = images(4)
    with torch.no_grad():
        assert torch.allclose(net(x), base(x), rtol=1e-5, atol=1e-5)


def test_dwconv_transform_runs_on_the_token_grid():
    kw = dict(class_token=False, global_pool="avg")
    net = small([mux(attn_mix="none", mlp_transform="dwconv")], **kw)
    assert net.blocks[0].attn.fused_attn is True  # no mixes: timm's fused attention is kept
    transforms = [b.mlp_transform for b in net.blocks]
    assert len({id(t) for t in transforms}) == len(transforms)
    seen = {}
    transforms[2].register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    out = net(images(2))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    t = transforms[2]
    normed = t.norm(seen["x"])
    grid = normed.transpose(1, 2).reshape(2, -1, 4, 4)
    assert torch.allclose(seen["y"], normed + t.conv(grid).flatten(2).transpose(1, 2), atol=1e-6)


# ---- combinations and errors ----------------------------------------------------------------------


def test_all_problems_reported_at_validation_at_once():
    errors = check("vit_tiny_patch16_224", [mux(share_every=3, mlp_transform="dwconv")], **SMALL, attn_layer="diff")
    assert len(errors) == 3 and all("\n" not in e for e in errors)
    text = "\n".join(errors)
    assert "not divisible by share_every 3" in text
    assert "attn_mix=conv1x1 rewrites timm's" in text and "DiffAttention" in text
    assert "mlp_transform=dwconv convolves the token grid" in text and "1 prefix token(s)" in text
    assert check("vit_tiny_patch16_224", [mux(attn_mix="none")], **SMALL, attn_layer="diff") == []
    with pytest.raises(StrategyError, match="attn_mix"):
        parse_params("multiplexed", {"attn_mix": "conv3x3"})
    (spec,) = parse_expression("multiplexed:attn_mix=none:mlp_transform=none")  # the parser reads none as null
    assert (spec.params.attn_mix, spec.params.mlp_transform) == ("none", "none")
    with pytest.raises(StrategyError, match="not divisible by share_every 3"):
        small([mux(share_every=3)])


def test_combinations_with_grouped_and_shallow():
    assert check("vit_tiny_patch16_224", [mux(), "grouped"], **SMALL) == [
        "strategy grouped after multiplexed: multiplexed already ties each group's MLP, so grouped would scale a "
        "shared MLP once per group it appears in; list grouped before multiplexed"
    ]
    assert "listed twice" in check("vit_tiny_patch16_224", [mux(), mux()], **SMALL)[0]
    grouped2 = {"name": "grouped", "params": {"group_size": 2}}
    assert check("vit_tiny_patch16_224", [grouped2, mux(share_every=4)], **SMALL) == []
    assert check("vit_tiny_patch16_224", ["shallow", mux()], **SMALL) == []
    # multiplexed then shallow: every shared MLP pruned once, its users stay tied
    net = small([mux(), {"name": "shallow", "params": {"keep_ratio": 0.5}}])
    stats = model_stats(net)
    assert (stats.unique_mlps, stats.unique_attn, stats.mlp_hidden) == (2, 2, 64)
    assert net.blocks[0].mlp is net.blocks[1].mlp and net(images(1)).shape == (1, 10)
    # grouped (pairs) then multiplexed (fours): attention and MLP both shared by four
    net = small([grouped2, mux(share_every=4)])
    assert model_stats(net).unique_mlps == 1 and net.blocks[3].mlp is net.blocks[0].mlp


# ---- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_round_trip_reties_shared_weights():
    net = small([mux(share_every=2, attn_mix="linear")], seed=5)
    packed = pack_state(net.state_dict())
    assert packed["aliases"]["blocks.1.attn.qkv.weight"] == "blocks.0.attn.qkv.weight"
    assert packed["aliases"]["blocks.3.mlp.fc2.bias"] == "blocks.2.mlp.fc2.bias"
    assert not any(k.startswith("blocks.1.") and "mix" in k for k in packed["aliases"])  # mixes are per layer
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    buffer.seek(0)
    # A model with the same keys but nothing shared: loading must tie it back.
    fresh = small([mux(share_every=1, attn_mix="linear")], seed=6)
    assert fresh.blocks[1].attn.qkv.weight is not fresh.blocks[0].attn.qkv.weight
    load_model_state(fresh, torch.load(buffer, weights_only=False))
    assert fresh.blocks[1].attn.qkv.weight is fresh.blocks[0].attn.qkv.weight
    assert fresh.blocks[3].mlp.fc1.weight is fresh.blocks[2].mlp.fc1.weight
    assert len(list(fresh.parameters())) == len(list(net.parameters()))
    x = images()
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))


# ---- shipped configs ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, model, params", [
    # DeiT without its class token and that token's position embedding, plus one 64 x 49 iRPE table per layer
    ("mini_deit_tiny", "deit_tiny_patch16_224", 3_053_056 - 2 * 192 + 12 * 64 * 49),
    ("mini_deit_small", "deit_small_patch16_224", 11_413_960 - 2 * 384 + 12 * 64 * 49),
    ("mini_deit_base", "deit_base_patch16_224", 44_062_312 - 2 * 768 + 12 * 64 * 49),
    ("mini_swin_style_deit_small", "deit_small_patch16_224", None),
])
def test_minivit_configs_validate(name, model, params, demo_data):
    spec = load_spec(MINIVIT / f"{name}.yaml", [f"data_root={demo_data.root}", "model.num_classes=10", "distill=null"])
    assert spec.model.name == model and [s.name for s in spec.strategies] == ["multiplexed"]
    assert {"class_token": False, "global_pool": "avg"}.items() <= spec.model.kwargs.items()
    if name.startswith("mini_deit"):  # upstream's model: LayerNorm before pooling, iRPE, best by the raw model
        assert spec.model.kwargs["fc_norm"] is False and spec.strategies[0].params.rpe == "contextual"
        assert spec.checkpoint.best_metric == "top1"
    t = spec.train
    assert (t.epochs, t.opt, t.lr, t.lr_base_batch, t.weight_decay) == (300, "adamw", 5e-4, 512, 0.05)
    assert t.scaled_lr(world_size=8) == pytest.approx(1e-3)  # 8 x 128 images: 5e-4 x 1024 / 512
    if params is not None:
        with torch.device("meta"):
            net = build_model(model, spec.strategies, **{**spec.create_kwargs(), "num_classes": 1000})
        assert model_stats(net).params == params
    # the dwconv variant needs its prefix-free model: with the class token back, validation says why
    if name.startswith("mini_swin"):
        with pytest.raises(SpecError, match="mlp_transform=dwconv convolves the token grid"):
            load_spec(MINIVIT / f"{name}.yaml", [f"data_root={demo_data.root}", "model.num_classes=10", "model.kwargs={}",
                                                  "distill=null"])


# ---- a real run: checkpoint, kill, exact resume ---------------------------------------------------


def test_multiplexed_run_resumes_exactly(demo_data, tmp_path):
    import rundir
    from jobs import checkpoint_files as ckpt
    from jobs.local import LocalContext
    from jobs.train import Hooks, train_loop

    class Killed(Exception):
        pass

    def spec(out):  # the demo's prefix-free tiny ViT: every option of the strategy on, dropout paths too
        return load_spec(MINIVIT.parent / "demo.yaml", [
            f"data_root={demo_data.root}", f"output_root={out}", "run_id=mux", "model.depth=2", "model.embed_dim=32",
            "model.num_heads=2", "model.patch_size=8", "model.drop_path_rate=0.1", "data.num_workers=1",
            "strategies=[{name: multiplexed, params: {share_every: 2, attn_mix: linear, mlp_transform: dwconv}}]",
            "train.epochs=2", "train.batch_size=256", "train.grad_accum=2", "train.lr=5e-3", "train.warmup_epochs=1",
            "train.ema=true", "train.ema_decay=0.9",
        ])

    def run(s, hooks=None):
        with LocalContext(s.run_dir, use_gpu=False) as ctx:
            return train_loop(s, ctx, hooks)

    def stable(run_dir):
        volatile = {"train_img_s", "epoch_s", "wall_time", "host", "resumed_from"}
        return [{k: v for k, v in r.items() if k not in volatile} for r in rundir.read_metrics(run_dir).to_pylist()]

    reference = spec(tmp_path / "reference")
    run(reference)
    resumed = spec(tmp_path / "resumed")

    def kill(state):
        if state.row["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        run(resumed, Hooks(after_epoch=kill))
    run(resumed)
    expected = stable(reference.run_dir)
    assert stable(resumed.run_dir) == expected and expected[0]["unique_mlps"] == 1
    packed = ckpt.load_file(ckpt.latest_valid(resumed.run_dir / rundir.CHECKPOINT_DIR), "model.pt")
    assert packed["aliases"]["blocks.1.attn.qkv.weight"] == "blocks.0.attn.qkv.weight"
    assert "blocks.1.attn.post_mix.weight" in packed["tensors"]
