"""Starting weights: every source form loads with timm before strategies; every bad file is one line,
found without loading weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from jobs import weights
from jobs.strategies.shallow import select_magnitude
from jobs.weights import WeightsError, build_start

NAME = "vit_tiny_patch16_224"
KW = dict(num_classes=10, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
HF_REPO = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # timm's default weights of NAME


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(123)
    return timm.create_model(NAME, **KW).state_dict()


def _same(model, state, skip=()):
    got = model.state_dict()
    return all(torch.equal(got[k], v) for k, v in state.items() if not k.startswith(skip))


@pytest.mark.parametrize("form", ["safetensors", "plain.pth", "state_dict.pth", "model.pt", "local-dir"])
def test_each_file_form_loads_before_strategies(form, trained, tmp_path):
    if form == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(trained, path)
        init = str(path)
    elif form == "local-dir":
        save_file(trained, tmp_path / "model.safetensors")
        init = f"local-dir:{tmp_path}"
    else:
        path = tmp_path / f"w.{form.split('.')[1]}"
        wrap = form.split(".")[0]
        torch.save(trained if wrap == "plain" else {wrap: trained, "epoch": 3}, path)
        init = str(path)
    weights.check_init(init, NAME, KW, None)
    start = build_start(NAME, [], KW, init=init, keep_unreduced=True)
    assert _same(start.model, trained) and _same(start.unreduced, trained)
    # shallow:magnitude prunes the *loaded* units: the kept rows are the top-k of the trained weights
    pruned = build_start(NAME, [{"name": "shallow", "params": {"keep_ratio": 0.5, "select": "magnitude"}}], KW,
                         init=init).model
    w1, w2 = trained["blocks.0.mlp.fc1.weight"], trained["blocks.0.mlp.fc2.weight"]
    keep = torch.sort(select_magnitude(w1, w2, 64)).values
    assert torch.equal(pruned.blocks[0].mlp.fc1.weight, w1[keep])
    assert torch.equal(pruned.blocks[0].mlp.fc2.weight, w2[:, keep])


def test_head_and_position_embedding_adapted_by_timm(trained, tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(trained, path)
    model = build_start(NAME, [], {**KW, "num_classes": 5, "img_size": 64}, init=str(path)).model
    assert model.head.weight.shape == (5, 32) and model.pos_embed.shape == (1, 65, 32)
    assert torch.equal(model.blocks[1].attn.qkv.weight, trained["blocks.1.attn.qkv.weight"])


def test_grouped_mean_averages_trained_mlps(trained, tmp_path):
    path = tmp_path / "w.pth"
    torch.save(trained, path)
    spec = [{"name": "grouped", "params": {"group_size": 2, "init": "mean", "scale": 0.5}}]
    model = build_start(NAME, spec, KW, init=str(path)).model
    mean = (trained["blocks.0.mlp.fc1.weight"] + trained["blocks.1.mlp.fc1.weight"]) / 2
    assert model.blocks[0].mlp is model.blocks[1].mlp
    assert torch.allclose(model.blocks[1].mlp.fc1.weight, mean * 0.5)
    fc2_bias = (trained["blocks.0.mlp.fc2.bias"] + trained["blocks.1.mlp.fc2.bias"]) / 2
    assert torch.allclose(model.blocks[0].mlp.fc2.bias, fc2_bias)  # averaged, not scaled
    first = build_start(NAME, [{"name": "grouped", "params": {"group_size": 2}}], KW, init=str(path)).model
    assert torch.allclose(first.blocks[1].mlp.fc1.weight, trained["blocks.0.mlp.fc1.weight"] * 2 ** -0.5)


def _fake_hf_cache(root: Path, state) -> Path:
    """The hub cache layout huggingface_hub reads: refs/main -> snapshots/<commit>/model.safetensors."""
    repo = root / f"models--{HF_REPO.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file(state, snap / "model.safetensors")
    return snap / "model.safetensors"


def test_pretrained_from_offline_hf_cache(tmp_path, monkeypatch):
    torch.manual_seed(7)
    state = timm.create_model(NAME, **{**KW, "num_classes": 1000}).state_dict()  # timm's own head: 1000 classes
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(WeightsError) as info:
        weights.check_init("pretrained", NAME, KW, None)
    msg = str(info.value)
    assert "\n" not in msg and HF_REPO in msg and str(tmp_path / "empty") in msg and msg.startswith("model.init:")
    file = _fake_hf_cache(tmp_path / "hub", state)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert weights.pretrained_file(NAME) == file
    weights.check_init("pretrained", NAME, KW, None)
    model = build_start(NAME, [], KW, init="pretrained").model
    assert _same(model, state, skip=("head",)) and model.head.weight.shape == (10, 32)


def test_bad_files_are_one_line_errors_found_without_loading(trained, tmp_path):
    good = tmp_path / "w.safetensors"
    save_file(trained, good)
    cases = {
        str(tmp_path / "missing.pth"): "does not exist",
        "weights.npz": "is not a weights source",
        f"local-dir:{tmp_path / 'nodir'}": "is not a folder",
    }
    torn = tmp_path / "torn.safetensors"
    torn.write_bytes(good.read_bytes()[:-100])
    cases[str(torn)] = "is truncated"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip file")
    cases[str(junk)] = "is not a readable PyTorch weights file"
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 1}, empty)
    cases[str(empty)] = "holds no state dict"
    for init, needle in cases.items():
        with pytest.raises(WeightsError) as info:
            weights.check_init(init, NAME, KW, None)
        assert needle in str(info.value) and "\n" not in str(info.value), (init, str(info.value))
    with pytest.raises(WeightsError) as info:
        weights.check_init(str(good), NAME, {**KW, "depth": 3, "embed_dim": 64}, None)
    msg = str(info.value)
    assert "\n" not in msg and "missing 12 keys: blocks.2." in msg and "shapes differ: cls_token file [1, 1, 32]" in msg
    # values are never read: a file whose tensor bytes are garbage but whose header is intact still checks
    raw = bytearray(good.read_bytes())
    raw[-64:] = b"\xff" * 64
    scrambled = tmp_path / "scrambled.safetensors"
    scrambled.write_bytes(bytes(raw))
    weights.check_init(str(scrambled), NAME, KW, None)


def test_shallow_diversity_prunes_loaded_units(trained, tmp_path):
    from jobs.strategies.shallow import select_diversity

    path = tmp_path / "w.safetensors"
    save_file(trained, path)
    spec = [{"name": "shallow", "params": {"keep_ratio": 0.25, "select": "diversity"}}]
    model = build_start(NAME, spec, KW, init=str(path)).model
    for i in range(2):
        w1, w2 = trained[f"blocks.{i}.mlp.fc1.weight"], trained[f"blocks.{i}.mlp.fc2.weight"]
        keep = torch.sort(select_diversity(w1, w2, 32)).values
        assert not torch.equal(keep, torch.arange(32))  # not the seed's first units: the trained rows chose
        assert torch.equal(model.blocks[i].mlp.fc1.weight, w1[keep])
        assert torch.equal(model.blocks[i].mlp.fc1.bias, trained[f"blocks.{i}.mlp.fc1.bias"][keep])
