"""The `distill:` block of a run spec: which teacher, which loss, how it mixes with the base loss.

Total loss = (1 - alpha) * base + alpha * kd (+ the relation losses), base being the run's usual loss
(mixup soft-target cross-entropy). `labels: false` (with alpha 1) trains without ever reading a label.
`relations:` adds MiniViT weight distillation (attention and hidden-state relations, each with its own
weight) on top of the logit or feature loss.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.sources import WeightsError, absolute, parse_source
from rundir import run_condition

from .losses import LOSSES
from .relations import RelationConfig

SELF = "self"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class TeacherSpec(_Strict):
    init: str = Field(description="self (the student as loaded by model.init, before strategies), pretrained, "
                                  "run:<condition>, a .safetensors/.pth/.pt file, or local-dir:<folder>")
    model: str | None = Field(None, description="timm model name of a pretrained/file teacher; None = the student's "
                                                "model.name and creation arguments (ignored for self and run:)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="further timm.create_model arguments of a "
                                                                     "teacher given by `model`")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"init": value} if isinstance(value, str) else value

    @field_validator("init")
    @classmethod
    def _source(cls, value: str) -> str:
        if value.strip() == SELF:
            return SELF
        try:
            source = parse_source(value, "distill.teacher.init")
        except WeightsError as exc:
            raise ValueError(f"{exc}, or self") from None
        if source.kind == "random":
            raise ValueError("a random teacher teaches nothing; use self, pretrained, run:<condition> or a file")
        return absolute(value)

    @property
    def is_self(self) -> bool:
        return self.init == SELF

    @property
    def is_run(self) -> bool:
        return run_condition(self.init) is not None


class FeatureLossConfig(_Strict):
    cls_weight: float = Field(1.0, ge=0, description="weight of the class-token MSE (DGMR: 1)")
    patch_weight: float = Field(1.0, ge=0, description="weight of the patch-token MSE (DGMR: 1)")
    pre_norm: bool = Field(True, description="compare the last block's tokens before the final norm; false = after")
    proj: Literal["none", "linear"] = Field("none", description="linear: a learned student->teacher width projection, "
                                                                "trained with the student; none: widths must match")


class DistillConfig(_Strict):
    teacher: TeacherSpec = Field(description="the frozen teacher (string shorthand: its init)")
    loss: str = Field(
        "soft", description="soft: DeiT KL * tau^2; hard: CE vs teacher argmax; softce: MiniViT soft cross-entropy; "
                            "feature_mse: DGMR MSE of the last block's tokens")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation loss; the base loss gets 1 - alpha")
    tau: float = Field(1.0, gt=0, description="softmax temperature of soft and softce")
    reduction: Literal["numel", "batchmean"] = Field(
        "numel", description="soft: divide the summed KL by batch x classes (DeiT) or by the batch (batchmean)")
    head: Literal["auto", "class", "distillation"] = Field(
        "auto", description="student head the logit loss trains: auto = the distillation head when the model has "
                            "one (DeiT distilled), else its output; class = the model's output (a distilled model's "
                            "two heads averaged)")
    labels: bool = Field(True, description="false: labels are never read for training (needs alpha 1)")
    feature: FeatureLossConfig = Field(default_factory=FeatureLossConfig, description="feature_mse options")
    relations: RelationConfig | None = Field(
        None, description="MiniViT weight distillation added to the loss: attn_relation (weight 1.0, "
                          "relation_heads 1), hidden_relation (weight 0.1, factor 49), layers {student, teacher} "
                          "(default every second layer use down from the last, teacher at the same relative depths), "
                          "prefix_tokens drop; {} = all defaults; None = off")

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        if value not in LOSSES:
            raise ValueError(f"unknown distillation loss {value!r}: valid choices are {', '.join(sorted(LOSSES))}")
        return value

    @model_validator(mode="after")
    def _label_free(self) -> "DistillConfig":
        if not self.labels and self.alpha != 1.0:
            raise ValueError(f"labels: false needs alpha: 1.0 (got {self.alpha}); the base loss reads labels")
        if self.loss == "feature_mse" and self.head == "distillation":
            raise ValueError("head: distillation applies to logit losses; feature_mse compares tokens")
        return self
