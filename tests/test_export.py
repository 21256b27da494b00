"""Export of a trained run in timm's Hugging Face layout: loaded by timm in a process where our package
cannot be imported, evaluated with timm's own eval transform on the demo's JPEG tree; shared weights
exported untied and tied again by jobs.load."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import jobs
from jobs import checkpoint_files as ckpt
from jobs.__main__ import main as jobs_main
from jobs.export import CONFIG_FILE, OURS, WEIGHTS_FILE, ExportError, export_model
from jobs.local import LocalContext
from jobs.models import architecture, build_model
from jobs.spec import load_spec
from jobs.train import train_loop
from rundir import CHECKPOINT_DIR, RunRecord, read_metrics

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
OUR_PACKAGES = ("jobs", "data", "orchestrator", "analysis")

# Runs under `python -I -S`: no PYTHONPATH, no cwd, no site (so no .pth file installs our editable
# package); only the venv's site-packages directory itself is put on sys.path.
TIMM_EVAL = r"""
import importlib.util, json, sys
from pathlib import Path
sys.path.append(sys.argv[1])
request = json.loads(sys.argv[2])
report = {"importable": [m for m in request["packages"] if importlib.util.find_spec(m) is not None], "exports": {}}
import timm, torch
from PIL import Image
for out in request["exports"]:
    model = timm.create_model("local-dir:" + out, pretrained=True).eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**cfg)
    names = json.loads((Path(out) / "config.json").read_text())["label_names"]
    samples = [(p, names.index(p.parent.name)) for p in sorted(Path(request["val_dir"]).glob("*/*.jpg"))]
    correct = 0
    with torch.no_grad():
        for i in range(0, len(samples), 100):
            chunk = samples[i:i + 100]
            x = torch.stack([transform(Image.open(p).convert("RGB")) for p, _ in chunk])
            pred = model(x).argmax(1)
            correct += sum(int(p == y) for p, (_, y) in zip(pred.tolist(), chunk))
    report["exports"][out] = {"top1": 100.0 * correct / len(samples), "images": len(samples),
                              "mlp_hidden": model.blocks[0].mlp.fc1.out_features, "data_config": cfg,
                              "module": type(model).__module__}
print(json.dumps(report))
"""


def timm_eval(exports: list[Path], val_dir: Path, cwd: Path) -> dict:
    request = {"exports": [str(e) for e in exports], "val_dir": str(val_dir), "packages": list(OUR_PACKAGES)}
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", TIMM_EVAL, sysconfig.get_paths()["purelib"],
                           json.dumps(request)], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory):
    """A real 3-epoch CPU run of the demo ViT with GroupedMLP + ShallowMLP (EMA on, best = ema_top1)."""
    spec = load_spec(DEMO, [
        f"data_root={demo_data.root}", f"output_root={tmp_path_factory.mktemp('runs')}", "run_id=gs",
        "strategies=[{name: grouped, params: {group_size: 2}}, {name: shallow, params: {keep_ratio: 0.5}}]",
        "train.epochs=3", "data.num_workers=1",
    ])
    with LocalContext(spec.run_dir, use_gpu=False) as ctx:
        train_loop(spec, ctx)
    return spec


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """`python -m jobs export` of the best (EMA) and the last weights; what it printed."""
    out = tmp_path_factory.mktemp("exports")
    printed = {}
    for weights in ("best", "last"):
        target = out / weights
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert jobs_main(["export", str(trained.run_dir), str(target), "--weights", weights]) == 0
        printed[weights] = buf.getvalue()
    return out, printed


def test_plain_timm_loads_the_export_and_its_eval_transform_gives_the_runs_top1(trained, exported, demo_data,
                                                                                 tmp_path):
    out, _ = exported
    rows = read_metrics(trained.run_dir).to_pylist()
    expected = {"best": max(r["ema_top1"] for r in rows), "last": rows[-1]["top1"]}
    report = timm_eval([out / "best", out / "last"], demo_data.val_dir, tmp_path)
    assert report["importable"] == []  # the process really had only timm, not our code
    for weights, top1 in expected.items():
        got = report["exports"][str(out / weights)]
        assert got["module"].startswith("timm.")
        assert got["images"] == 360
        assert got["mlp_hidden"] == 128  # embed 64 x 4 x keep_ratio 0.5: the reduced width, from model_args
        assert got["data_config"]["input_size"] == [3, 32, 32]
        assert abs(got["top1"] - top1) <= 1.0, (weights, got["top1"], top1)
    # the two exports are different weights (EMA at its best epoch vs the last model), both scored right
    assert load_file(str(out / "best" / WEIGHTS_FILE))["head.weight"].ne(
        load_file(str(out / "last" / WEIGHTS_FILE))["head.weight"]).any()


def test_config_json_has_model_args_eval_data_config_and_the_strategies(trained, exported):
    out, printed = exported
    config = json.loads((out / "best" / CONFIG_FILE).read_text())
    assert config["architecture"] == "vit_tiny_patch16_224"
    assert config["num_classes"] == 10
    args = config["model_args"]
    assert (args["mlp_ratio"], args["depth"], args["embed_dim"], args["patch_size"], args["img_size"]) == \
        (2.0, 4, 64, 4, 32)
    cfg = config["pretrained_cfg"]
    data = trained.data
    assert (cfg["input_size"], cfg["crop_pct"], cfg["mean"], cfg["std"], cfg["crop_mode"]) == \
        ([3, 32, 32], data.crop_pct, list(data.mean), list(data.std), "center")
    assert cfg["interpolation"] == "box"
    assert config["label_names"] == [f"digit_{i}" for i in range(10)]
    ours = config[OURS]
    assert ours["strategies"] == [s.model_dump(mode="json") for s in trained.strategies]
    assert ours["tied"]["blocks.1.mlp.fc1.weight"] == "blocks.0.mlp.fc1.weight"
    best_meta = ckpt.read_manifest(trained.run_dir / CHECKPOINT_DIR / ckpt.BEST_DIR)
    assert (ours["weights"]["metric"], ours["weights"]["epoch"], ours["weights"]["top1"]) == \
        ("ema_top1", best_meta["epoch"], best_meta["value"])
    # the CLI states the untied size next to the size of the unique weights
    assert "shared weights untied: 8 tensors" in printed["best"] and "MiB of unique weights" in printed["best"]


def test_jobs_load_ties_the_shared_mlps_again_and_gives_identical_logits(trained, exported):
    out, _ = exported
    model = jobs.load(out / "best")
    for a, b in ((0, 1), (2, 3)):
        assert model.blocks[a].mlp is model.blocks[b].mlp
        assert model.blocks[a].mlp.fc1.weight is model.blocks[b].mlp.fc1.weight
    assert model.blocks[0].mlp is not model.blocks[2].mlp
    reference = build_model(trained.model.name, trained.strategies, **trained.create_kwargs())
    best = torch.load(trained.run_dir / CHECKPOINT_DIR / ckpt.BEST_DIR / ckpt.BEST_WEIGHTS, weights_only=True)
    reference.load_state_dict(best)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))
    # still one parameter after loading: an update to one block's MLP is the other's
    with torch.no_grad():
        model.blocks[0].mlp.fc2.weight.add_(1.0)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, model.blocks[0].mlp.fc2.weight)


def test_ema_weights_are_the_latest_checkpoints_ema_scored_by_its_ema_top1(trained, tmp_path, capsys):
    assert jobs_main(["export", str(trained.run_dir), str(tmp_path / "ema"), "--weights", "ema"]) == 0
    assert "epoch 3, run's ema_top1" in capsys.readouterr().out
    latest = ckpt.latest_valid(trained.run_dir / CHECKPOINT_DIR)
    ema = ckpt.unpack_state(ckpt.load_file(latest, "ema.pt"))
    tensors = load_file(str(tmp_path / "ema" / WEIGHTS_FILE))
    assert tensors.keys() == ema.keys() and all(torch.equal(tensors[k], ema[k]) for k in ema)
    weights = json.loads((tmp_path / "ema" / CONFIG_FILE).read_text())[OURS]["weights"]
    last_row = read_metrics(trained.run_dir).to_pylist()[-1]
    assert (weights["metric"], weights["epoch"], weights["top1"]) == ("ema_top1", 3, last_row["ema_top1"])


def test_jobs_load_refuses_a_file_whose_shared_copies_differ(exported, tmp_path):
    out, _ = exported
    copy = tmp_path / "edited"
    shutil.copytree(out / "best", copy)
    tensors = load_file(str(copy / WEIGHTS_FILE))
    tensors["blocks.1.mlp.fc1.weight"] = tensors["blocks.1.mlp.fc1.weight"] + 1
    save_file(tensors, str(copy / WEIGHTS_FILE))
    with pytest.raises(ExportError, match="blocks.1.mlp.fc1.weight should equal blocks.0.mlp.fc1.weight"):
        jobs.load(copy)


@pytest.mark.parametrize("strategies, hidden", [
    ([{"name": "thin", "params": {"mlp_ratio": 1.5}}], 96),
    ([{"name": "shallow", "params": {"keep_ratio": 0.3, "select": "magnitude"}}], 76),  # 76/64: not a round ratio
    ([{"name": "grouped", "params": {"group_size": 4}}], 256),
])
def test_reduced_models_rebuild_in_timm_from_model_args(strategies, hidden, demo_data, tmp_path):
    spec = load_spec(DEMO, [f"data_root={demo_data.root}", f"output_root={tmp_path}", f"strategies={strategies}"])
    torch.manual_seed(0)
    model = build_model(spec.model.name, spec.strategies, **spec.create_kwargs()).eval()
    result = export_model(model, spec, tmp_path / "out")
    assert result.timm_problems == [] and result.max_logit_diff == 0.0
    plain = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    assert plain.blocks[0].mlp.fc1.out_features == hidden
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))
    again = jobs.load(tmp_path / "out")
    assert len({id(b.mlp) for b in again.blocks}) == len({id(b.mlp) for b in model.blocks})


def test_a_model_timm_cannot_express_is_exported_for_jobs_load_and_says_so(demo_data, tmp_path):
    spec = load_spec(DEMO, [f"data_root={demo_data.root}", f"output_root={tmp_path}"])
    model = build_model(spec.model.name, spec.strategies, **spec.create_kwargs())
    model.blocks[0].mix = torch.nn.Parameter(torch.ones(4))  # e.g. a per-layer transform timm's ViT lacks
    result = export_model(model, spec, tmp_path / "out")
    assert result.timm_problems == ["1 tensors timm's model does not have, e.g. blocks.0.mix"]
    assert "not loadable by plain timm" in "\n".join(result.summary())
    assert json.loads((tmp_path / "out" / CONFIG_FILE).read_text())[OURS]["timm_loadable"] is False
    assert "blocks.0.mix" in load_file(str(tmp_path / "out" / WEIGHTS_FILE))


def test_export_errors_are_one_line_and_name_the_fix(trained, exported, tmp_path, capsys):
    out, _ = exported
    assert jobs_main(["export", str(tmp_path), str(tmp_path / "x")]) == 2
    assert "spec.json is missing" in capsys.readouterr().err
    assert jobs_main(["export", str(trained.run_dir), str(out / "best")]) == 2
    err = capsys.readouterr().err
    assert "exists and is not empty" in err and "--force" in err
    with pytest.raises(ExportError, match="not an export"):
        jobs.load(tmp_path)


@pytest.mark.parametrize("strategies", [[], [{"name": "shallow", "params": {"keep_ratio": 0.3}}],
                                        [{"name": "grouped", "params": {"group_size": 2}}]])
def test_the_recorded_architecture_is_the_built_models(strategies):
    """What spec.json records (and export rebuilds timm's mlp_ratio from) is what build_model builds."""
    kw = dict(num_classes=10, img_size=32, patch_size=8, depth=2, embed_dim=40, num_heads=2)
    with torch.device("meta"):
        net = build_model("vit_tiny_patch16_224", strategies, **kw)
    built = {"depth": len(net.blocks), "embed_dim": net.embed_dim, "num_heads": net.blocks[0].attn.num_heads,
             "mlp_hidden": net.blocks[0].mlp.fc1.out_features}
    assert architecture("vit_tiny_patch16_224", strategies, **kw) == built


def test_the_trained_run_recorded_its_spec_and_architecture(trained):
    spec = RunRecord.read(trained.run_dir).spec
    assert spec.run_id == trained.run_id and spec.epochs == trained.train.epochs
    arch = spec.architecture  # the demo ViT: width 64, 4 blocks, MLP 256 wide before shallow's 0.5
    assert (arch.depth, arch.embed_dim, arch.mlp_hidden) == (4, 64, 128)
