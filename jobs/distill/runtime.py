"""One distillation training step: student and teacher on the same (augmented, mixed) batch.

The teacher runs under no_grad in eval mode with the student's autocast; the last block's tokens are
read with a forward hook on the model's final norm (its input = before the norm). A learned width
projection (`feature.proj: linear`) belongs to the student side: it is trained by the same optimizer
and saved in the checkpoint, never in the exported model. Relation losses (`relations:`) read both
models with forward hooks: build the Distiller after any copy of the student (its EMA), or the copy
would carry the hooks.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from jobs.weights import Place, Start, WeightsError

from .config import DistillConfig
from .losses import LOSSES, Outputs
from .relations import RelationDistiller
from .teacher import Teacher, build_teacher, pair_errors


class _TokenTap:
    """Keeps the last block's tokens of every forward of `model` (before or after its final norm)."""

    def __init__(self, model: nn.Module, pre_norm: bool):
        self.tokens: torch.Tensor | None = None
        self.pre_norm = pre_norm
        self.handle = model.norm.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.tokens = inputs[0] if self.pre_norm else output

    def take(self) -> torch.Tensor:
        tokens, self.tokens = self.tokens, None
        if tokens is None:
            raise RuntimeError("the model's final norm did not run in the forward pass; feature_mse needs a timm ViT")
        return tokens


class Distiller:
    """Computes (1 - alpha) * base + alpha * kd for a batch; owns the teacher and the projection."""

    def __init__(self, cfg: DistillConfig, teacher: Teacher, student: nn.Module, device: torch.device,
                 channels_last: bool = False):
        self.cfg = cfg
        self.loss = LOSSES[cfg.loss]
        self.teacher = teacher.model.to(device)
        if channels_last and device.type == "cuda":
            self.teacher.to(memory_format=torch.channels_last)
        self.identity = teacher.identity
        has_dist = hasattr(student, "set_distilled_training")
        self.distilled_head = self.loss.reads == "logits" and (
            cfg.head == "distillation" or (cfg.head == "auto" and has_dist))
        if has_dist:
            # DeiT: in training the model returns (class logits, distillation logits); eval averages both
            student.set_distilled_training(self.distilled_head)
        self.proj: nn.Module | None = None
        self._proj_net: nn.Module | None = None
        self.student_tap = self.teacher_tap = None
        if self.loss.reads == "tokens":
            self.student_tap = _TokenTap(student, cfg.feature.pre_norm)
            self.teacher_tap = _TokenTap(self.teacher, cfg.feature.pre_norm)
            s_dim, t_dim = student.embed_dim, self.teacher.embed_dim
            if cfg.feature.proj == "linear" and s_dim != t_dim:
                self.proj = nn.Linear(s_dim, t_dim).to(device)
                self._proj_net = self.proj
                if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                    self._proj_net = nn.parallel.DistributedDataParallel(
                        self.proj, device_ids=[device.index] if device.type == "cuda" else None)
        self.relations = RelationDistiller(cfg.relations, student, self.teacher) if cfg.relations else None
        self._prefix = (getattr(student, "num_prefix_tokens", 0), getattr(self.teacher, "num_prefix_tokens", 0))
        self._cls = (getattr(student, "has_class_token", False), getattr(self.teacher, "has_class_token", False))

    # ---- what the train loop calls --------------------------------------------------------------

    def train_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Label-free recovery: what the loop mixes and passes on instead of the labels (never read)."""
        return labels if self.cfg.labels else torch.zeros_like(labels)

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters outside the student (the projection)."""
        return list(self.proj.parameters()) if self.proj is not None else []

    def add_to(self, optimizer: torch.optim.Optimizer) -> None:
        """Train the projection with the student's optimizer (one more group, created before the scheduler)."""
        if self.proj is not None:
            optimizer.add_param_group({"params": self.parameters()})

    def state_dict(self) -> dict[str, Any]:
        return {"proj": self.proj.state_dict() if self.proj is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.proj is not None and state.get("proj") is not None:
            self.proj.load_state_dict(state["proj"])

    def __call__(self, net: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                 base_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        out = net(images)
        cls_logits, kd_logits = out if isinstance(out, tuple) else (out, out)
        with torch.no_grad():
            t_logits = self.teacher(images)
        if isinstance(t_logits, tuple):  # a distilled teacher left in training mode by its owner
            t_logits = (t_logits[0] + t_logits[1]) / 2
        s = Outputs(logits=kd_logits, prefix=self._prefix[0], has_class_token=self._cls[0])
        t = Outputs(logits=t_logits, prefix=self._prefix[1], has_class_token=self._cls[1])
        if self.loss.reads == "tokens":
            s_tokens = self.student_tap.take()
            if self._proj_net is not None:
                s_tokens = self._proj_net(s_tokens)
            s = Outputs(tokens=s_tokens, prefix=s.prefix, has_class_token=s.has_class_token)
            t = Outputs(tokens=self.teacher_tap.take().detach(), prefix=t.prefix, has_class_token=t.has_class_token)
        kd = self.loss.fn(s, t, self.cfg)
        # alpha 1: the base loss, and so the labels, are never computed
        loss = kd if self.cfg.alpha == 1.0 else (1.0 - self.cfg.alpha) * base_loss(cls_logits, targets) + self.cfg.alpha * kd
        if self.relations is not None:  # MiniViT adds the weighted relation losses to the logit loss
            loss = loss + sum(self.relations.losses().values())
        return loss


def make_distiller(spec: Any, start: Start, device: torch.device) -> Distiller | None:
    """The distiller of a jobs.spec.RunSpec (None without a distill block); the teacher is checked against
    the student here too, since a run: teacher only exists once its stage has finished."""
    if spec.distill is None:
        return None
    teacher = build_teacher(spec.distill, spec.model.name, spec.create_kwargs(), Place.of(spec), start.unreduced,
                            spec.model.init)
    errors = pair_errors(start.model, teacher.model, spec.distill)
    if errors:
        raise WeightsError("; ".join(errors))
    return Distiller(spec.distill, teacher, start.model, device, spec.train.channels_last)
