"""Distillation losses against hand-computed values, and the config's one-line errors."""
from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from jobs.distill import DistillConfig, Outputs, hard_ce, soft_ce, soft_kl, token_mse

S = torch.tensor([[0.0, 0.0]])
T = torch.tensor([[0.0, math.log(3.0)]])  # teacher softmax = [1/4, 3/4]


def test_soft_kl_deit_values():
    # KL(t||s) = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.130812; DeiT divides the sum by s.numel() = 2
    assert soft_kl(S, T, 1.0).item() == pytest.approx(0.065406, abs=1e-6)
    # tau 2: t/2 -> softmax [1/(1+sqrt3), sqrt3/(1+sqrt3)]; KL * 4 / 2
    p = torch.tensor([1.0, math.sqrt(3.0)]) / (1 + math.sqrt(3.0))
    kl2 = float((p * (p / 0.5).log()).sum())
    assert soft_kl(S, T, 2.0).item() == pytest.approx(kl2 * 4 / 2, abs=1e-6)
    assert soft_kl(S, T, 2.0).item() == pytest.approx(0.072682, abs=1e-6)
    assert soft_kl(S, T, 1.0, "batchmean").item() == pytest.approx(0.130812, abs=1e-6)


def test_soft_kl_batch_scaling():
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    t = torch.tensor([[0.0, math.log(3.0)], [1.0, 0.0]])  # second row: identical, KL 0
    assert soft_kl(s, t, 1.0).item() == pytest.approx(0.130812 / 4, abs=1e-6)
    assert soft_kl(s, t, 1.0, "batchmean").item() == pytest.approx(0.130812 / 2, abs=1e-6)


def test_hard_and_softce_values():
    assert hard_ce(S, T).item() == pytest.approx(math.log(2), abs=1e-6)
    assert soft_ce(S, T, 1.0).item() == pytest.approx(0.693147, abs=1e-6)
    assert soft_ce(S, T, 2.0).item() == pytest.approx(0.693147, abs=1e-6)
    # a confident student: -(1/4 ln softmax0 + 3/4 ln softmax1) with s = [0, ln 3] -> entropy of [1/4, 3/4]
    assert soft_ce(T, T, 1.0).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)


def test_token_mse_weights_class_and_patch_tokens():
    s = torch.zeros(1, 3, 2)            # class token + 2 patch tokens, width 2
    t = torch.zeros(1, 3, 2)
    t[0, 0] = torch.tensor([2.0, 0.0])  # class-token MSE = 4/2 = 2
    t[0, 1] = torch.tensor([1.0, 1.0])  # patch MSE over 2 tokens x 2 = (1+1)/4 = 0.5
    so = Outputs(tokens=s, prefix=1, has_class_token=True)
    to = Outputs(tokens=t, prefix=1, has_class_token=True)
    assert token_mse(so, to, 1.0, 1.0).item() == pytest.approx(2.5)
    assert token_mse(so, to, 0.5, 2.0).item() == pytest.approx(0.5 * 2 + 2 * 0.5)
    no_cls = Outputs(tokens=s[:, 1:], prefix=0)
    assert token_mse(no_cls, Outputs(tokens=t[:, 1:], prefix=0), 1.0, 1.0).item() == pytest.approx(0.5)


@pytest.mark.parametrize("raw, needle", [
    ({"teacher": "self", "loss": "kl"}, "unknown distillation loss 'kl'"),
    ({"teacher": "self", "labels": False, "alpha": 0.5}, "labels: false needs alpha: 1.0"),
    ({"teacher": "weights.npz"}, "is not a weights source"),
    ({"teacher": "random"}, "a random teacher teaches nothing"),
    ({"teacher": "run:"}, "'run:' needs a condition name"),
    ({"teacher": "self", "loss": "feature_mse", "head": "distillation"}, "head: distillation applies to logit"),
])
def test_config_errors_are_one_line(raw, needle):
    with pytest.raises(ValidationError) as info:
        DistillConfig.model_validate(raw)
    (err,) = info.value.errors()
    assert needle in err["msg"] and "\n" not in err["msg"]


def test_config_shorthand_and_defaults():
    cfg = DistillConfig.model_validate({"teacher": "run:baseline", "loss": "hard"})
    assert cfg.teacher.init == "run:baseline" and cfg.teacher.is_run and (cfg.alpha, cfg.tau) == (0.5, 1.0)
    assert all(f.description for f in DistillConfig.model_fields.values())


def test_relative_weight_files_become_absolute_for_workers(tmp_path, monkeypatch):
    from jobs.spec import ModelSpec

    monkeypatch.chdir(tmp_path)
    assert ModelSpec(init="w/model.pth").init == str(tmp_path / "w" / "model.pth")
    assert ModelSpec(init="local-dir:w").init == f"local-dir:{tmp_path / 'w'}"
    assert ModelSpec(init="run:baseline").init == "run:baseline"
    assert DistillConfig.model_validate({"teacher": "t.safetensors"}).teacher.init == str(tmp_path / "t.safetensors")
