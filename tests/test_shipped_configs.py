"""Every shipped config can be read before its data exists: `--print-config` prints it (missing dataset and
weights files are warnings) and `inspect` counts the exact model it builds; Mini-DeiT's counts are upstream's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from jobs.inspect import main as jobs_inspect
from jobs.spec import read_yaml
from jobs.study import study_kind
from jobs.train_cli import main as train_main
from orchestrator.plan import print_resolved

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml"))


def upstream_mini_deit_params(dim: int, heads: int, depth: int = 12, share: int = 2, classes: int = 1000) -> int:
    """microsoft/Cream MiniViT/Mini-DeiT's model, counted from its definitions (mini_vision_transformer.py):
    PatchEmbed 16x16, 196 position embeddings, no class token; depth/share MiniBlocks each holding one qkv
    (bias), proj, Mlp(4 dim); per layer (RepeatedModuleList) norm1, norm2, conv_l, conv_w (H x H, no bias) and
    the iRPE on keys (irpe.py: shared head -> 1 x head_dim x 49 buckets at ratio 1.9); final norm; head."""
    patch = 3 * 16 * 16 * dim + dim
    pos = 196 * dim
    block = (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (dim * 4 * dim + 4 * dim) + (4 * dim * dim + dim)
    per_layer = 2 * 2 * dim + 2 * heads * heads + (dim // heads) * 49
    return patch + pos + depth // share * block + depth * per_layer + 2 * dim + dim * classes + classes


def test_upstream_counts_are_the_published_ones():
    assert [upstream_mini_deit_params(d, h) for d, h in [(768, 12), (384, 6), (192, 3)]] == \
        [44_098_408, 11_450_824, 3_090_304]


@pytest.fixture(scope="module")
def no_data(tmp_path_factory) -> list[str]:
    """Overrides pointing the data at a folder that does not exist."""
    missing = tmp_path_factory.mktemp("nodata") / "absent"
    return [f"data_root={missing}"]


@pytest.mark.parametrize("config", CONFIGS)
def test_print_config_and_inspect_work_without_data(config, no_data, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    study = study_kind(read_yaml(Path(config)), []) == "study"
    assert print_resolved(config, no_data) == 0
    out, err = capsys.readouterr()
    printed = yaml.safe_load(out)
    assert printed["runs"] if study else printed["model"]
    assert "warning: data.train_path:" in err and "does not exist" in err
    if not study:
        assert train_main([config, *no_data, "--print-config"]) == 0
        direct = yaml.safe_load(capsys.readouterr().out)  # paths not made absolute, unlike the orchestrator's
        assert (direct["model"], direct["strategies"]) == (printed["model"], printed["strategies"])
    assert jobs_inspect([config, *no_data, "--format", "json"]) == 0, capsys.readouterr().err
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["params"] > 0 and r["gmacs"] > 0 for r in rows)
    if "mini_deit" in config:
        dim, heads = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}[config.split("_")[-1][:-5]]
        assert [r["params"] for r in rows] == [upstream_mini_deit_params(dim, heads)]


def test_a_study_is_inspected_one_row_per_condition(capsys):
    assert jobs_inspect(["configs/paper/study.yaml", "--format", "json"]) == 0
    rows = {r["strategy"]: r for r in json.loads(capsys.readouterr().out)}
    assert sorted(rows) == ["baseline", "grouped", "shallow", "thin"]  # the 2 seeds build the same models
    assert rows["baseline"]["params"] == 86_567_656  # timm's vit_base_patch16_224
    assert all(rows[c]["params"] < rows["baseline"]["params"] for c in ("grouped", "shallow", "thin"))


def test_mini_deit_switches_are_one_override_away(capsys):
    config = "configs/minivit/mini_deit_tiny.yaml"
    assert jobs_inspect([config, "--format", "json"]) == 0
    upstream = json.loads(capsys.readouterr().out)[0]
    assert jobs_inspect([config, "strategies.0.params.rpe=none", "model.kwargs.fc_norm=null", "--format", "json"]) == 0
    ours = json.loads(capsys.readouterr().out)[0]
    assert upstream["params"] - ours["params"] == 12 * 64 * 49  # one 64 x 49 iRPE table per layer
