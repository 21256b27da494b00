"""MiniViT weight distillation in training (CPU, demo data): relation losses in the optimised loss, hooks
kept off the EMA copy, exact resume of a multiplexed run with relations, the shipped configs validated."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import timm
import torch

import rundir
from jobs import checkpoint_files as ckpt
from jobs.distill.runtime import make_distiller
from jobs.local import LocalContext
from jobs.loop_state import Hooks, build_start, build_state
from jobs.spec import SpecError, load_spec
from tests.tiny import run_local, stable_rows, tiny_spec

MINIVIT = Path(__file__).resolve().parents[1] / "configs" / "minivit"
MUX = "strategies=[{name: multiplexed, params: {share_every: 2, attn_mix: linear, mlp_transform: dwconv}}]"
RELATIONS = ("distill={teacher: self, loss: softce, alpha: 1.0, tau: 1.0, relations: {hidden_relation: "
             "{weight: 0.5}, layers: {student: [1, 0], teacher: [1, 0]}}}")


class Killed(Exception):
    pass


def spec_for(demo_data, out: Path, *extra: str):
    """The demo's prefix-free tiny ViT, multiplexed with every option on, taught by its unreduced self."""
    return tiny_spec(
        demo_data, out, "model.drop_path_rate=0.1", MUX, "train.epochs=2", "train.batch_size=256",
        "train.grad_accum=2", "train.lr=5e-3", "train.warmup_epochs=1", "train.ema=true", "train.ema_decay=0.9",
        "checkpoint.every_steps=2", *extra, run_id="mux",
    )


def grads_and_loss(spec) -> tuple[dict[str, torch.Tensor], float, dict[str, float]]:
    start = build_start(spec)
    distiller = make_distiller(spec, start, torch.device("cpu"))
    model = start.model.train()
    torch.manual_seed(1)
    images = torch.randn(8, 3, spec.img_size, spec.img_size)
    loss = distiller(model, images, torch.zeros(8, 10), lambda *_: pytest.fail("alpha 1 never computes the base loss"))
    loss.backward()
    parts = distiller.relations.losses() if distiller.relations is not None else {}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, float(loss), {k: float(v) for k, v in parts.items()}


def test_relation_losses_are_in_the_optimised_loss(demo_data, tmp_path):
    off = spec_for(demo_data, tmp_path, "distill={teacher: self, loss: softce, alpha: 1.0}")
    on = spec_for(demo_data, tmp_path, RELATIONS)
    g_off, loss_off, _ = grads_and_loss(off)
    g_on, loss_on, parts = grads_and_loss(on)
    assert set(parts) == {"attn_relation", "hidden_relation"} and all(v > 0 for v in parts.values())
    # same model, batch and teacher: the loss differs by exactly the weighted relation losses
    assert loss_on == pytest.approx(loss_off + sum(parts.values()), rel=1e-5)
    assert g_on.keys() == g_off.keys()
    # qkv of the shared block gets the attention-relation gradient; every relation layer moves the norms
    for name in ("blocks.0.attn.qkv.weight", "blocks.0.norm1.weight", "blocks.1.norm1.weight"):
        assert not torch.allclose(g_on[name], g_off[name]), name


def test_distiller_hooks_stay_off_the_ema_copy(demo_data, tmp_path):
    spec = spec_for(demo_data, tmp_path, RELATIONS)
    with LocalContext(spec.run_dir, use_gpu=False) as ctx:
        state = build_state(spec, ctx, Hooks(), lambda *_: None)
        student, ema = state.parts.model, state.ema.module
        assert student.blocks[0]._forward_hooks and student.blocks[0].attn.qkv._forward_hooks
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in ema.modules())
        teacher = state.parts.distiller.teacher
        assert teacher.blocks[1]._forward_hooks and not teacher.training


def test_multiplexed_run_with_relations_resumes_exactly(demo_data, tmp_path):
    reference = spec_for(demo_data, tmp_path / "reference", RELATIONS)
    run_local(reference)
    expected = stable_rows(reference.run_dir)
    assert [r["epoch"] for r in expected] == [1, 2] and expected[0]["unique_mlps"] == 1
    plain = spec_for(demo_data, tmp_path / "plain", "distill={teacher: self, loss: softce, alpha: 1.0}")
    run_local(plain)
    assert stable_rows(plain.run_dir)[0]["train_loss"] != expected[0]["train_loss"]  # relations change the training

    resumed = spec_for(demo_data, tmp_path / "resumed", RELATIONS)
    steps = []

    def kill(state):  # mid-epoch, after a step checkpoint: the resume replays part of an epoch
        steps.append(1)
        if len(steps) == 3:
            raise Killed

    with pytest.raises(Killed):
        run_local(resumed, Hooks(after_step=kill))
    run_local(resumed)
    assert stable_rows(resumed.run_dir) == expected
    rows = rundir.read_metrics(resumed.run_dir).to_pylist()
    assert rows[0]["resumed_from"] is not None or rows[1]["resumed_from"] is not None
    manifest = ckpt.read_manifest(ckpt.latest_valid(resumed.run_dir / rundir.CHECKPOINT_DIR))
    assert manifest["teacher"]["init"] == "self (random)"


# ---- shipped configs ----------------------------------------------------------------------------


def sparse_weights(path: Path, model: str, **kwargs) -> Path:
    """A safetensors file with `model`'s real key/shape header and zero-filled (sparse, no disk) data: enough
    for validation, which reads the header and the size only."""
    with torch.device("meta"):
        state = timm.create_model(model, **kwargs).state_dict()
    header, offset = {}, 0
    for key, tensor in state.items():
        size = tensor.numel() * 4
        header[key] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return path


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    return {
        "regnety_160": sparse_weights(root / "regnety_160.safetensors", "regnety_160", num_classes=10),
        "deit_base_patch16_224": sparse_weights(root / "deit_base.safetensors", "deit_base_patch16_224",
                                                num_classes=10),
    }


@pytest.mark.parametrize("name, teacher", [
    ("mini_deit_base", "regnety_160"), ("mini_deit_small", "regnety_160"), ("mini_deit_tiny", "regnety_160"),
    ("mini_swin_style_deit_small", "deit_base_patch16_224"),
])
def test_minivit_distill_configs_validate(name, teacher, teachers, demo_data):
    base = [f"data_root={demo_data.root}", "model.num_classes=10"]
    # the shipped teacher path is a placeholder: validation names the field and the file
    with pytest.raises(SpecError, match="distill.teacher.init"):
        load_spec(MINIVIT / f"{name}.yaml", base)
    spec = load_spec(MINIVIT / f"{name}.yaml", [*base, f"distill.teacher.init={teachers[teacher]}"])
    d = spec.distill
    assert (d.teacher.model, d.alpha, d.tau, spec.train.epochs, spec.train.weight_decay) == (teacher, 1.0, 1.0, 300, 0.05)
    if name.startswith("mini_deit"):
        assert d.loss == "soft" and d.relations is None
    else:
        assert d.loss == "softce"
        assert (d.relations.attn_relation.weight, d.relations.hidden_relation.weight) == (1.0, 0.1)
        assert d.relations.resolve_layers(12, 12) == ([11, 9, 7, 5, 3, 1], [11, 9, 7, 5, 3, 1])


def test_relation_errors_at_validation_all_at_once(teachers, demo_data):
    with pytest.raises(SpecError) as info:
        load_spec(MINIVIT / "mini_swin_style_deit_small.yaml", [
            f"data_root={demo_data.root}", "model.num_classes=10", "model.img_size=160", "data.img_size=160",
            f"distill.teacher.init={teachers['deit_base_patch16_224']}", "distill.teacher.kwargs={img_size: 224}",
            "distill.relations.layers={student: [12, 9], teacher: [11, 14]}",
        ])
    relations = [e for e in info.value.errors if "relations" in e]
    assert len(relations) == 3 and all("\n" not in e for e in relations)
    assert "distill.relations.layers.student: [12] out of range" in relations[0]
    assert "distill.relations.layers.teacher: [14] out of range" in relations[1]
    assert "equal token counts" in relations[2] and "100" in relations[2] and "196" in relations[2]
    # a non-ViT teacher cannot give relations: said at validation, on one line
    with pytest.raises(SpecError, match="relations read both models' blocks"):
        load_spec(MINIVIT / "mini_deit_tiny.yaml", [
            f"data_root={demo_data.root}", "model.num_classes=10", f"distill.teacher.init={teachers['regnety_160']}",
            "distill.relations={}",
        ])
