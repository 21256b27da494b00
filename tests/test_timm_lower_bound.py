"""pyproject's timm lower bound is a release the code works with: that exact timm (from the package registry,
beside the installed one) imports every module of jobs and builds, runs and back-propagates every strategy,
Mini-DeiT's multiplexed attention with iRPE included. The full suite runs on the newest allowed timm."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHECK = r"""
import importlib, pkgutil, sys
import timm, torch
import jobs
assert timm.__version__ == sys.argv[1], (timm.__version__, timm.__file__)
for mod in pkgutil.walk_packages(jobs.__path__, "jobs."):
    if not mod.name.endswith("__main__"):
        importlib.import_module(mod.name)
from jobs.models import build_model
from jobs.strategies import STRATEGIES, parse_expression
small = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=10)
expressions = sorted(STRATEGIES) + ["multiplexed:rpe=contextual", "grouped+shallow:keep_ratio=0.5"]
for expression in expressions:
    torch.manual_seed(0)
    net = build_model("vit_tiny_patch16_224", parse_expression(expression), **small)
    out = net(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 10) and all(p.grad is not None for p in net.parameters() if p.requires_grad), expression
print("ok", timm.__version__, len(expressions))
"""


def lower_bound() -> str:
    text = (REPO / "pyproject.toml").read_text()
    (version,) = re.findall(r'"timm>=([0-9.]+)', text)
    return version


def test_the_lowest_allowed_timm_builds_every_strategy(tmp_path):
    version = lower_bound()
    target = tmp_path / "timm"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                          f"timm=={version}"], capture_output=True, text=True)
    assert pip.returncode == 0, f"pip could not fetch timm=={version}:\n{pip.stderr[-2000:]}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", CHECK, version], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"timm {version} (pyproject's lower bound) fails:\n{out.stderr[-3000:]}"
    assert out.stdout.startswith(f"ok {version}")
