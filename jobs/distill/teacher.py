"""The frozen teacher: built from its source, checked against the student, identified by its weights.

A teacher is never trained: eval mode, no gradients, outside the optimizer, the EMA and the
checkpoint. What the checkpoint records is its identity (source, file, sha256), so a resume with
other teacher weights is refused instead of silently mixing two teachers in one run.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from jobs import weights
from jobs.strategies import ModelShape, StrategyError
from jobs.strategies.vit import shape_of
from jobs.weights import Place, WeightsError

from .config import DistillConfig
from .losses import LOSSES

FIELD = "distill.teacher"


@dataclass
class Teacher:
    model: nn.Module
    identity: dict[str, Any]  # {"init", "path", "sha256"}: what a checkpoint records


def _identity(init: str, path: Path | None) -> dict[str, Any]:
    return {"init": init, "path": str(path) if path else None, "sha256": weights.sha256_file(path) if path else None}


def teacher_create_kwargs(cfg: DistillConfig, student_kwargs: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(model name or None for the student's, creation kwargs) of a pretrained/file teacher."""
    if cfg.teacher.model is None:
        return None, {**student_kwargs, **cfg.teacher.kwargs}
    keep = {k: student_kwargs[k] for k in ("num_classes", "img_size") if k in student_kwargs}
    if "img_size" in keep and not _takes_img_size(cfg.teacher.model):
        del keep["img_size"]  # a CNN teacher (DeiT's RegNetY) takes any resolution and no such argument
    return cfg.teacher.model, {**keep, **cfg.teacher.kwargs}


@functools.lru_cache(maxsize=None)
def _takes_img_size(model_name: str) -> bool:
    try:
        with torch.device("meta"):
            timm.create_model(model_name, img_size=224)
    except TypeError:
        return False
    except Exception:  # any other failure is the creation's own, reported where the teacher is built
        return True
    return True


def _student_meta(model_name: str, create_kwargs: dict[str, Any]) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(model_name, **create_kwargs)


def _shape(model: nn.Module, role: str) -> ModelShape | str:
    try:
        return shape_of(model, type(model).__name__)
    except (StrategyError, AttributeError, IndexError, TypeError):
        return (f"distill.relations: the {role} {type(model).__name__} is not a timm ViT with blocks of attn.qkv and "
                "mlp; relations read both models' blocks (use a ViT/DeiT teacher, or drop relations)")


def relation_errors(student: nn.Module, teacher: nn.Module | None, cfg: DistillConfig) -> list[str]:
    """Problems of the relation losses between the two models (teacher None: not built yet, student side only)."""
    if cfg.relations is None:
        return []
    s_shape = _shape(student, "student")
    t_shape = _shape(teacher, "teacher") if teacher is not None else None
    shape_errors = [s for s in (s_shape, t_shape) if isinstance(s, str)]
    if shape_errors:
        return shape_errors
    return cfg.relations.check(s_shape, t_shape)


def pair_errors(student: nn.Module, teacher: nn.Module | None, cfg: DistillConfig) -> list[str]:
    """Problems of distilling `teacher` into `student` with this loss (models may be on the meta device);
    teacher None = a teacher not built yet, only the student side is checked."""
    errors = relation_errors(student, teacher, cfg)
    if teacher is None:
        teacher = student
    reads = LOSSES[cfg.loss].reads
    has_dist = hasattr(student, "set_distilled_training")
    if cfg.head == "distillation" and not has_dist:
        errors.append(f"distill.head: distillation, but {type(student).__name__} has no distillation head; use a "
                      "deit_*_distilled model or head: class")
    if reads == "logits":
        s_out, t_out = getattr(student, "num_classes", None), getattr(teacher, "num_classes", None)
        if s_out != t_out:
            errors.append(f"{FIELD}: the teacher has {t_out} classes, the student {s_out}; give a teacher trained on "
                          f"the student's {s_out} classes")
    else:
        s_patch = student.patch_embed.num_patches if hasattr(student, "patch_embed") else None
        t_patch = teacher.patch_embed.num_patches if hasattr(teacher, "patch_embed") else None
        if s_patch != t_patch:
            errors.append(f"distill.loss: feature_mse compares tokens, but the student has {s_patch} patch tokens and "
                          f"the teacher {t_patch}; give both the same img_size and patch_size")
        s_cls, t_cls = getattr(student, "has_class_token", False), getattr(teacher, "has_class_token", False)
        if cfg.feature.cls_weight and s_cls != t_cls:
            errors.append("distill.feature.cls_weight: only one of student and teacher has a class token; "
                          "set cls_weight: 0")
        s_dim, t_dim = getattr(student, "embed_dim", None), getattr(teacher, "embed_dim", None)
        if s_dim != t_dim and cfg.feature.proj == "none":
            errors.append(f"distill.feature.proj: student width {s_dim} differs from the teacher's {t_dim}; set "
                          "proj: linear (a learned projection) or use a teacher of the same width")
    return errors


def check_teacher(cfg: DistillConfig, model_name: str, student_kwargs: dict[str, Any], place: Place | None) -> list[str]:
    """Validation of the teacher without loading weights; `run:` teachers are checked when the run starts."""
    student = _student_meta(model_name, student_kwargs)
    if cfg.teacher.is_self:
        return pair_errors(student, student, cfg)
    if cfg.teacher.is_run:
        return pair_errors(student, None, cfg)  # the student side; a run: teacher is paired when the run starts
    name, kwargs = teacher_create_kwargs(cfg, student_kwargs)
    name = name or model_name
    try:
        source = weights.parse_source(cfg.teacher.init, f"{FIELD}.init")
        path = weights.weights_path(source, name, place, f"{FIELD}.init")
        outputs = weights.check_fits(path, name, kwargs, f"{FIELD}.init")
    except WeightsError as exc:
        return [str(exc)]
    teacher = _student_meta(name, {**kwargs, "num_classes": outputs})
    return pair_errors(student, teacher, cfg)


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def teacher_path(cfg: DistillConfig, model_name: str, place: Place | None, init: str) -> Path | None:
    """The file the teacher's weights come from (for self: the student's starting weights, if any)."""
    if cfg.teacher.is_self:
        return weights.weights_path(weights.parse_source(init), model_name, place, "model.init")
    name = teacher_create_kwargs(cfg, {})[0] or model_name
    return weights.weights_path(weights.parse_source(cfg.teacher.init, f"{FIELD}.init"), name, place, f"{FIELD}.init")


def teacher_identity(cfg: DistillConfig | None, model_name: str, place: Place | None, init: str,
                     path: Path | None = None) -> dict[str, Any] | None:
    """What a checkpoint records about the teacher: its source, file and the file's sha256."""
    if cfg is None:
        return None
    path = teacher_path(cfg, model_name, place, init) if path is None else path
    ident = _identity(cfg.teacher.init, path)
    return {**ident, "init": f"self ({init})"} if cfg.teacher.is_self else ident


def build_teacher(cfg: DistillConfig, model_name: str, student_kwargs: dict[str, Any], place: Place | None,
                  unreduced: nn.Module | None, init: str = "random") -> Teacher:
    """The teacher with its weights. `unreduced` is the student as loaded, before strategies (for self)."""
    path = teacher_path(cfg, model_name, place, init)
    identity = teacher_identity(cfg, model_name, place, init, path)
    if cfg.teacher.is_self:
        if unreduced is None:
            raise WeightsError(f"{FIELD}: self needs the unreduced student (weights.build_start keep_unreduced=True)")
        return Teacher(_frozen(copy.deepcopy(unreduced)), identity)
    # The teacher's random init must not move the student's training stream.
    with torch.random.fork_rng(devices=[]):
        if cfg.teacher.is_run:
            model = _run_teacher(path)
        else:
            name, kwargs = teacher_create_kwargs(cfg, student_kwargs)
            name = name or model_name
            source = weights.parse_source(cfg.teacher.init, f"{FIELD}.init")
            outputs = weights.check_fits(path, name, kwargs, f"{FIELD}.init")
            model = weights.create_with_weights(name, {**kwargs, "num_classes": outputs}, source, path,
                                                f"{FIELD}.init")
    return Teacher(_frozen(model), identity)


def _run_teacher(path: Path) -> nn.Module:
    """Another run's best export, built as that run built it (its model, kwargs and strategies)."""
    from jobs.dependencies import export_meta
    from jobs.models import build_model

    meta = export_meta(path)
    model = build_model(meta["model"], meta.get("strategies", []), **meta.get("create_kwargs", {}))
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except RuntimeError as exc:
        raise WeightsError(f"{FIELD}.init: {path} does not fit the model its export names "
                           f"({weights._one_line_load_error(exc)}); rerun that run") from None
    return model


def resume_error(recorded: dict[str, Any] | None, current: dict[str, Any] | None) -> str | None:
    """One line when a checkpoint was trained with another teacher than the one given now."""
    if recorded is None and current is None:
        return None
    if current is None:
        return (f"distill: the run was trained with teacher {recorded.get('init')} ({recorded.get('path')}); resume "
                "it with that distill: block, or start a new run (another run_id)")
    if recorded is None:
        return ("distill.teacher: the checkpoint to resume was written without a teacher; resume without distill: "
                "or start a new run (another run_id)")
    if recorded.get("sha256") != current.get("sha256") or (recorded.get("sha256") is None
                                                              and recorded.get("init") != current.get("init")):
        return (f"distill.teacher: the run was trained with teacher {recorded.get('init')} "
                f"({recorded.get('path')}, sha256 {str(recorded.get('sha256'))[:12]}), now "
                f"{current.get('init')} ({current.get('path')}, sha256 {str(current.get('sha256'))[:12]}); "
                "restore that teacher's weights, or start a new run (another run_id)")
    return None
