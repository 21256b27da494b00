"""Knowledge distillation: a frozen teacher and a loss added to (or replacing) the run's base loss.

The package root stays free of timm so the run-spec schema can import the config; the teacher
(`jobs.distill.teacher`) and the training step (`jobs.distill.runtime`) are imported where used.
"""
from .config import DistillConfig, FeatureLossConfig, TeacherSpec
from .losses import LOSSES, Outputs, hard_ce, soft_ce, soft_kl, token_mse

__all__ = [
    "LOSSES", "DistillConfig", "FeatureLossConfig", "Outputs", "TeacherSpec", "hard_ce", "soft_ce", "soft_kl",
    "token_mse",
]
