"""Bad starting weights and teachers: each a one-line spec error naming the field and the fix, at
validation; and the distillation step itself on DeiT distilled-token students and width projections."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from jobs.distill import DistillConfig, soft_kl
from jobs.distill.runtime import Distiller
from jobs.distill.teacher import Teacher
from jobs.spec import SpecError, load_spec

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
NAME = "vit_tiny_patch16_224"
STUDENT = dict(num_classes=10, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2,
               drop_path_rate=0.0, global_pool="avg", class_token=False)


def spec(demo_data, *extra):
    return load_spec(DEMO, [f"data_root={demo_data.root}", "model.depth=2", "model.embed_dim=32",
                            "model.num_heads=2", "model.patch_size=8", *extra])


def _save(tmp_path: Path, name: str, **changes) -> Path:
    torch.manual_seed(0)
    model = timm.create_model(NAME, **{**STUDENT, **changes})
    path = tmp_path / name
    save_file(model.state_dict(), path)
    return path


def _only_error(demo_data, *extra) -> str:
    with pytest.raises(SpecError) as info:
        spec(demo_data, *extra)
    assert len(info.value.errors) == 1, info.value.errors
    (line,) = info.value.errors
    assert "\n" not in line
    return line


def test_good_files_validate(demo_data, tmp_path):
    good = _save(tmp_path, "good.safetensors")
    s = spec(demo_data, f"model.init={good}", f"distill={{teacher: {good}, loss: hard}}")
    assert s.model.init == str(good) and s.distill.teacher.init == str(good)


def test_bad_init_and_teacher_files(demo_data, tmp_path):
    other = _save(tmp_path, "deeper.safetensors", depth=4)
    torn = tmp_path / "torn.safetensors"
    torn.write_bytes(_save(tmp_path, "x.safetensors").read_bytes()[:500])
    missing = tmp_path / "missing.pth"
    line = _only_error(demo_data, f"model.init={missing}")
    assert line.startswith("model.init: weights file") and "does not exist" in line
    line = _only_error(demo_data, f"model.init={other}")
    assert line.startswith("model.init:") and "unexpected 24 keys: blocks.2." in line
    line = _only_error(demo_data, f"distill={{teacher: {torn}}}")
    assert line.startswith("distill.teacher.init:") and "header of" in line and "replace it" in line
    line = _only_error(demo_data, f"distill={{teacher: {missing}}}")
    assert line.startswith("distill.teacher.init: weights file")
    line = _only_error(demo_data, "model.init=weights.onnx")
    assert line.startswith("model.init:") and "is not a weights source" in line


def test_teacher_classes_tokens_widths_and_heads(demo_data, tmp_path):
    five = _save(tmp_path, "five.safetensors", num_classes=5)
    line = _only_error(demo_data, f"distill={{teacher: {five}, loss: soft}}")
    assert line.startswith("distill.teacher: the teacher has 5 classes, the student 10")
    spec(demo_data, f"distill={{teacher: {five}, loss: feature_mse}}")  # tokens only: the head does not matter

    wide = _save(tmp_path, "wide.safetensors", embed_dim=64, num_heads=4)
    teacher = f"{{init: {wide}, model: {NAME}, kwargs: {{patch_size: 8, depth: 2, embed_dim: 64, num_heads: 4, " \
              "global_pool: avg, class_token: false}}"
    line = _only_error(demo_data, f"distill={{teacher: {teacher}, loss: feature_mse}}")
    assert line.startswith("distill.feature.proj: student width 32 differs from the teacher's 64")
    spec(demo_data, f"distill={{teacher: {teacher}, loss: feature_mse, feature: {{proj: linear}}}}")

    fine = _save(tmp_path, "fine.safetensors", patch_size=4)
    teacher = f"{{init: {fine}, model: {NAME}, kwargs: {{patch_size: 4, depth: 2, embed_dim: 32, num_heads: 2, " \
              "global_pool: avg, class_token: false}}"
    line = _only_error(demo_data, f"distill={{teacher: {teacher}, loss: feature_mse}}")
    assert line.startswith("distill.loss: feature_mse compares tokens, but the student has 16 patch tokens and "
                           "the teacher 64")

    line = _only_error(demo_data, "distill={teacher: self, head: distillation}")
    assert line.startswith("distill.head: distillation, but VisionTransformer has no distillation head")


def test_distilled_token_student_base_on_class_head_kd_on_distillation_head():
    torch.manual_seed(0)
    kw = dict(num_classes=10, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
    student = timm.create_model("deit_tiny_distilled_patch16_224", **kw)
    teacher = timm.create_model(NAME, **kw)
    cfg = DistillConfig.model_validate({"teacher": "self", "loss": "soft", "alpha": 0.3, "tau": 2.0})
    distiller = Distiller(cfg, Teacher(teacher.eval(), {}), student, torch.device("cpu"))
    assert distiller.distilled_head and student.distilled_training
    x = torch.randn(4, 3, 32, 32)
    y = torch.randint(0, 10, (4,))
    student.train()
    loss = distiller(student, x, y, F.cross_entropy)
    with torch.no_grad():
        cls, dist = student(x)
        t = teacher(x)
        want = 0.7 * F.cross_entropy(cls, y) + 0.3 * soft_kl(dist, t, 2.0)
    # drop-path is off and the batch is the same: the two forward passes are identical
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    student.eval()
    with torch.no_grad():
        assert torch.allclose(student(x), (cls + dist) / 2, atol=1e-6)  # evaluation averages both heads


def test_width_projection_is_trained_with_the_student():
    torch.manual_seed(0)
    student = timm.create_model(NAME, **STUDENT)
    teacher = timm.create_model(NAME, **{**STUDENT, "embed_dim": 64, "num_heads": 4})
    cfg = DistillConfig.model_validate({"teacher": "self", "loss": "feature_mse", "alpha": 1.0, "labels": False,
                                        "feature": {"proj": "linear"}})
    distiller = Distiller(cfg, Teacher(teacher, {}), student, torch.device("cpu"))
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    distiller.add_to(opt)
    assert opt.param_groups[1]["params"] == distiller.parameters() and len(distiller.parameters()) == 2
    before = distiller.proj.weight.detach().clone()
    loss = distiller(student, torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), F.cross_entropy)
    loss.backward()
    opt.step()
    assert not torch.equal(before, distiller.proj.weight)
    assert all(p.grad is None for p in teacher.parameters())
    assert set(distiller.state_dict()["proj"]) == {"weight", "bias"}


def _proj_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    torch.manual_seed(0)  # the same models and projection on every rank
    student = timm.create_model(NAME, **STUDENT)
    teacher = timm.create_model(NAME, **{**STUDENT, "embed_dim": 64, "num_heads": 4})
    cfg = DistillConfig.model_validate({"teacher": "self", "loss": "feature_mse", "alpha": 1.0, "labels": False,
                                        "feature": {"proj": "linear"}})
    distiller = Distiller(cfg, Teacher(teacher, {}), student, torch.device("cpu"))
    net = torch.nn.parallel.DistributedDataParallel(student)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    distiller.add_to(opt)
    torch.manual_seed(100 + rank)  # each rank its own images
    loss = distiller(net, torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), F.cross_entropy)
    loss.backward()
    opt.step()
    torch.save(distiller.proj.state_dict(), f"{out}/proj{rank}.pt")
    dist.destroy_process_group()


def test_width_projection_gradients_are_averaged_across_workers(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_proj_rank, args=(2, port, str(tmp_path)), nprocs=2)
    a, b = (torch.load(tmp_path / f"proj{r}.pt") for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)  # different batches, one update: the all-reduced gradient
