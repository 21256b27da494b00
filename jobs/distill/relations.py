"""MiniViT weight distillation: attention-relation and hidden-relation losses between a student and a
teacher ViT, read from both models with forward hooks (no change to their forward code).

- `attn_relation`: q, k, v are the raw outputs (B, N, C) of a layer's `attn.qkv` Linear, split into
  `relation_heads` heads; for all 9 pairs (i, j) of {q, k, v}, R_ij = X_i X_jᵀ / sqrt(C / heads) and
  the loss is softCE(R^s_ij, R^t_ij) over the key axis, averaged over rows, the 9 pairs and the layers
  (Mini-Swin `cal_relation_loss`). Student and teacher widths may differ; token counts must match.
- `hidden_relation`: a layer's output tokens normalised over channels, token-cosine matrices of both
  models, MSE, times `factor`, averaged over layers. The matrices span all of a layer's tokens (not
  windows), and Mini-Swin's `cal_hidden_relation_loss` multiplies that MSE by a fixed 49 whatever the
  token count: `factor` defaults to 49, so weight 0.1 means what it means upstream (factor 1 would make
  the hidden-relation term 49x weaker).
- Layers are indices of layer *uses* in forward order: a block shared by several layers counts once
  per use, so `multiplexed` models are addressed like their unshared originals. Student and teacher
  layers are paired by position in the two lists.
- Prefix tokens (class, distillation, register) are dropped from both models by default, so a
  Mini-DeiT student without a class token can learn from a DeiT teacher with one; `keep` compares all
  tokens and then needs equal prefix counts.

Hooks run on every forward of the hooked models: build a `RelationDistiller` after any copy of the
student (e.g. its EMA), since `copy.deepcopy` would carry the hooks into the copy.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

if TYPE_CHECKING:  # importing jobs.strategies pulls in timm, which a run-spec schema should not need
    from jobs.strategies.registry import ModelShape


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttnRelationConfig(_Strict):
    weight: float = Field(1.0, ge=0, description="loss weight (MiniViT: 1.0); 0 turns the attention relation off")
    relation_heads: int = Field(1, ge=1, description="heads q, k, v are split into for the relations (MiniViT: 1)")


class HiddenRelationConfig(_Strict):
    weight: float = Field(0.1, ge=0, description="loss weight (MiniViT: 0.1); 0 turns the hidden relation off")
    factor: float = Field(49.0, gt=0, description="multiplier of the MSE; 49 = Mini-Swin main.py's fixed constant "
                                                   "(applied to the whole-stage MSE, whatever the token count)")


class RelationLayers(_Strict):
    student: list[int] | None = Field(
        None, description="student layer uses to distil, counting every use of a shared block; "
        "default: every second layer down from the last (depth 12: [11, 9, 7, 5, 3, 1])"
    )
    teacher: list[int] | None = Field(
        None, description="teacher layers paired by position with `student`; default: the same relative depths "
        "((i + 1) * teacher_depth / student_depth - 1, rounded)"
    )


class RelationConfig(_Strict):
    """MiniViT weight distillation on top of logit distillation."""

    attn_relation: AttnRelationConfig = Field(default_factory=AttnRelationConfig, description="q/k/v relation loss")
    hidden_relation: HiddenRelationConfig = Field(default_factory=HiddenRelationConfig, description="token-cosine loss")
    layers: RelationLayers = Field(default_factory=RelationLayers, description="which layers of each model are paired")
    prefix_tokens: Literal["drop", "keep"] = Field(
        "drop", description="drop = compare patch tokens only (prefix counts may differ); keep = all tokens"
    )

    def resolve_layers(self, student_depth: int, teacher_depth: int) -> tuple[list[int], list[int]]:
        student = self.layers.student
        if student is None:
            student = list(range(student_depth - 1, -1, -2))
        teacher = self.layers.teacher
        if teacher is None:
            teacher = [max(0, round((i + 1) * teacher_depth / student_depth) - 1) for i in student]
        return list(student), list(teacher)

    def tokens(self, shape: "ModelShape") -> int:
        return shape.num_patches + (shape.num_prefix_tokens if self.prefix_tokens == "keep" else 0)

    def check(self, student: "ModelShape", teacher: "ModelShape | None", where: str = "distill.relations") -> list[str]:
        """Every problem of distilling `teacher` into `student` with these relations, one line each. A teacher
        of None (a `run:` teacher, built by an earlier stage) checks the student side only."""
        errors = []
        s_layers, t_layers = self.resolve_layers(student.depth, (teacher or student).depth)
        sides = (("student", s_layers, student), ("teacher", t_layers, teacher))
        for role, layers, shape in sides:
            if shape is None:
                continue
            bad = [i for i in layers if not 0 <= i < shape.depth]
            if bad:
                errors.append(
                    f"{where}.layers.{role}: {bad} out of range for {shape.name}, which has {shape.depth} layer uses "
                    f"(0..{shape.depth - 1})"
                )
            if not layers:
                errors.append(f"{where}.layers.{role}: empty; list at least one layer")
        if len(s_layers) != len(t_layers):
            errors.append(
                f"{where}.layers: {len(s_layers)} student and {len(t_layers)} teacher layers; they are paired by "
                "position, so give lists of equal length"
            )
        if teacher is None:
            return errors + self._width_errors(sides, where)
        s_tokens, t_tokens = self.tokens(student), self.tokens(teacher)
        if s_tokens != t_tokens:
            hint = "" if self.prefix_tokens == "drop" else " (or prefix_tokens: drop)"
            errors.append(
                f"{where}: relations need equal token counts, but {student.name} has {s_tokens} and {teacher.name} "
                f"{t_tokens} ({self.prefix_tokens} prefix tokens); use the same patch grid{hint}"
            )
        return errors + self._width_errors(sides, where)

    def _width_errors(self, sides, where: str) -> list[str]:
        if self.attn_relation.weight == 0:
            return []
        heads = self.attn_relation.relation_heads
        return [f"{where}.attn_relation.relation_heads: {heads} does not divide the {role} width {shape.embed_dim} "
                f"of {shape.name}" for role, _, shape in sides if shape is not None and shape.embed_dim % heads]


# ---- the losses ------------------------------------------------------------------------------------


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """−Σ softmax(t)·log_softmax(s) over the last axis, averaged over all other axes (no T², not KL)."""
    return -(F.softmax(teacher_logits, dim=-1) * F.log_softmax(student_logits, dim=-1)).sum(-1).mean()


def _relations(qkv: torch.Tensor, heads: int) -> list[list[torch.Tensor]]:
    """R[i][j] = X_i X_jᵀ / sqrt(C / heads) for X in (q, k, v) of a (B, N, 3C) qkv output."""
    B, N, C3 = qkv.shape
    C = C3 // 3
    parts = qkv.reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, C / heads)
    scaled = parts / (C / heads) ** 0.5
    return [[scaled[i] @ parts[j].transpose(-2, -1) for j in range(3)] for i in range(3)]


def attn_relation_loss(student_qkv: list[torch.Tensor], teacher_qkv: list[torch.Tensor], heads: int = 1) -> torch.Tensor:
    """softCE between student and teacher q/k/v relations, averaged over the 9 pairs and the layers."""
    total = student_qkv[0].new_zeros(())
    for s, t in zip(student_qkv, teacher_qkv, strict=True):
        if s.shape[:2] != t.shape[:2]:
            raise ValueError(f"attention relation: student tokens {tuple(s.shape[:2])} != teacher {tuple(t.shape[:2])}")
        rs, rt = _relations(s, heads), _relations(t, heads)
        total = total + sum(soft_cross_entropy(rs[i][j], rt[i][j]) for i in range(3) for j in range(3))
    return total / (9 * len(student_qkv))


def hidden_relation_loss(student_hidden: list[torch.Tensor], teacher_hidden: list[torch.Tensor],
                         factor: float = 1.0) -> torch.Tensor:
    """MSE between token-cosine matrices of student and teacher, times `factor`, averaged over layers."""
    total = student_hidden[0].new_zeros(())
    for s, t in zip(student_hidden, teacher_hidden, strict=True):
        s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
        total = total + F.mse_loss(s @ s.transpose(-2, -1), t @ t.transpose(-2, -1)) * factor
    return total / len(student_hidden)


# ---- capture -----------------------------------------------------------------------------------------


def _float(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.float() for t in tensors]


def _unique(modules) -> list[nn.Module]:
    return list({id(m): m for m in modules}.values())


class LayerCapture:
    """Records, for chosen layer uses of a timm ViT, the raw `attn.qkv` output and the block output.

    A pre-hook on every distinct block counts layer uses in forward order; the hook on a (possibly
    shared) qkv Linear attributes its output to the use that is running."""

    def __init__(self, model: nn.Module, layers: list[int], qkv: bool = True, hidden: bool = True,
                 drop_prefix: bool = True):
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or not len(blocks):
            raise ValueError(f"{type(model).__name__} has no `blocks`: relation distillation needs a timm ViT")
        qkvs = [getattr(getattr(b, "attn", None), "qkv", None) for b in blocks]
        if qkv and not all(isinstance(q, nn.Linear) for q in qkvs):
            raise ValueError(f"{type(model).__name__}: attention relations read `attn.qkv` (a Linear) in every block")
        self.layers, self.want_hidden = list(layers), hidden
        self.prefix = getattr(model, "num_prefix_tokens", 0) if drop_prefix else 0
        self._wanted = set(self.layers)
        self._use, self._inside = -1, False
        self.qkv: dict[int, torch.Tensor] = {}
        self.hidden: dict[int, torch.Tensor] = {}
        self._handles = [model.register_forward_pre_hook(self._reset)]
        for block in _unique(blocks):
            self._handles.append(block.register_forward_pre_hook(self._enter))
            self._handles.append(block.register_forward_hook(self._leave))
        if qkv:
            self._handles += [q.register_forward_hook(self._record_qkv) for q in _unique(qkvs)]

    def _reset(self, module, args) -> None:
        self._use, self._inside = -1, False
        self.qkv.clear()
        self.hidden.clear()

    def _enter(self, module, args) -> None:
        self._use += 1
        self._inside = True

    def _record_qkv(self, module, args, output) -> None:
        if self._inside and self._use in self._wanted and self._use not in self.qkv:
            self.qkv[self._use] = output[:, self.prefix:]

    def _leave(self, module, args, output) -> None:
        self._inside = False
        if self.want_hidden and self._use in self._wanted:
            self.hidden[self._use] = output[:, self.prefix:]

    def _take(self, store: dict[int, torch.Tensor], what: str) -> list[torch.Tensor]:
        missing = [i for i in self.layers if i not in store]
        if missing:
            raise RuntimeError(f"no {what} recorded for layer uses {missing} (the last forward ran {self._use + 1})")
        return [store[i] for i in self.layers]

    def qkv_outputs(self) -> list[torch.Tensor]:
        return self._take(self.qkv, "qkv output")

    def hidden_states(self) -> list[torch.Tensor]:
        return self._take(self.hidden, "block output")

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._reset(None, ())


class RelationDistiller:
    """Hooks on a student and a teacher; after a forward of each on the same batch, `losses()` gives the
    weighted relation losses (each key present only when its weight is above 0)."""

    def __init__(self, cfg: RelationConfig, student: nn.Module, teacher: nn.Module):
        self.cfg = cfg
        s_layers, t_layers = cfg.resolve_layers(len(student.blocks), len(teacher.blocks))
        use_qkv, use_hidden = cfg.attn_relation.weight > 0, cfg.hidden_relation.weight > 0
        drop = cfg.prefix_tokens == "drop"
        self.student = LayerCapture(student, s_layers, use_qkv, use_hidden, drop)
        self.teacher = LayerCapture(teacher, t_layers, use_qkv, use_hidden, drop)

    def losses(self) -> dict[str, torch.Tensor]:
        out = {}
        attn, hidden = self.cfg.attn_relation, self.cfg.hidden_relation
        # In float32: autocast leaves the captured outputs in half precision, and the relations go through
        # a softmax over N scores.
        if attn.weight > 0:
            loss = attn_relation_loss(_float(self.student.qkv_outputs()), _float(self.teacher.qkv_outputs()),
                                      attn.relation_heads)
            out["attn_relation"] = attn.weight * loss
        if hidden.weight > 0:
            loss = hidden_relation_loss(_float(self.student.hidden_states()), _float(self.teacher.hidden_states()),
                                        hidden.factor)
            out["hidden_relation"] = hidden.weight * loss
        return out

    def remove(self) -> None:
        self.student.remove()
        self.teacher.remove()
