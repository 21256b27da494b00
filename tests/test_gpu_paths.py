"""The code paths a GPU run selects, run as far as a CPU can: torch.compile (inductor's CPU backend) of the
training step and of evaluation, bf16 autocast end to end through train_loop, channels-last, and the FFCV
pipeline built for a CUDA device."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs import recipe
from jobs.accounting import model_stats
from jobs.local import LocalContext
from jobs.loop_state import Hooks, build_start
from jobs.models import build_model
from jobs.spec import load_spec
from jobs.train import evaluate, train_loop

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "paper" / "baseline.yaml"
TINY = ["model.patch_size=4", "model.depth=2", "model.embed_dim=32", "model.num_heads=2", "data.img_size=32",
        "model.num_classes=10", "train.batch_size=8", "train.epochs=1", "data.num_workers=1", "resources.num_workers=1",
        "resources.use_gpu=false", "train.amp_dtype=bfloat16"]


@pytest.fixture(scope="module")
def synth_betons(tmp_path_factory):
    """train/val .beton files of 32 + 16 synthetic photos in 10 classes (stored at <= 64 px)."""
    sys.path.insert(0, str(REPO / "bench"))
    from data_synth import make_tree

    from data.convert import ConvertOptions, convert
    from data.labels import read_label_map

    root = tmp_path_factory.mktemp("synth")
    opts = ConvertOptions(max_res=64, write_mode="jpg", workers=1)
    convert(make_tree(root / "train_tree", 32, 1), root / "train.beton", opts, log=lambda *_: None)
    convert(make_tree(root / "val_tree", 16, 1), root / "val.beton", opts,
            label_map=read_label_map(root / "train.beton"), log=lambda *_: None)
    return root


def _spec(root: Path, tmp_path: Path, *extra: str):
    return load_spec(PAPER, [f"data_root={root}", f"output_root={tmp_path}", *TINY, *extra])


def test_ffcv_pipeline_for_a_cuda_device_builds_without_one(synth_betons):
    from ffcv.transforms import ToDevice, ToTensor

    from data.ffcv_backend import FfcvSource

    cuda = torch.device("cuda", 0)
    for train, name in ((True, "train.beton"), (False, "val.beton")):
        source = FfcvSource(synth_betons / name, train=train, order_fn=lambda epoch: np.arange(16), batch_size=8,
                            img_size=32, num_workers=1, device=cuda)
        loader = source.loader
        for field in ("image", "label"):
            transforms = loader.pipeline_specs[field].transforms
            assert [type(t) for t in transforms] == [ToTensor, ToDevice]
            assert transforms[-1].device == cuda and transforms[-1].non_blocking
        # ffcv compiled the pipelines into stages: the jitted decoders first, the copies to the GPU last
        stages = loader.code[0]
        copies = [loader.pipeline_specs[field].transforms[-1] for field in ("image", "label")]
        to_device = {loader.graph.node_to_id[node] for t in copies for node in loader.graph.operation_to_node[t]}
        assert len(to_device) == 2
        assert to_device <= set(stages[-1][1]) and not to_device & set(stages[0][1])


def test_bf16_autocast_end_to_end_through_train_loop(synth_betons, tmp_path):
    # The paper recipe (mixup, cutmix, RandAugment, erasing, EMA, accumulation) with bf16 autocast on the
    # CPU's kernels: the path a GPU run takes with train.amp, minus the device.
    spec = _spec(synth_betons, tmp_path, "train.amp_cpu=true", "train.amp_dtype=bfloat16")
    seen: set[tuple[bool, torch.dtype]] = set()
    models = []

    def after_step(state) -> None:
        if not models:  # from the second forward pass on: training and both evaluations
            models.append(state.model)
            for module in (state.model.blocks[0].mlp.fc1, state.model.head, state.parts.ema.module.head):
                module.register_forward_hook(lambda m, args, out: seen.add((m.training, out.dtype)))

    with LocalContext(spec.run_dir, use_gpu=False, env={}) as ctx:
        row = train_loop(spec, ctx, Hooks(after_step=after_step))
    assert (True, torch.bfloat16) in seen and (False, torch.bfloat16) in seen
    assert all(dtype == torch.bfloat16 for _, dtype in seen)
    # master weights (and the EMA) stay float32; only the compute is bf16
    model = models[0]
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert np.isfinite(row["train_loss"]) and row["top1"] is not None and row["ema_top1"] is not None
    # the run's compute columns (model built on the CPU, fused attention) equal the count on the meta device
    with torch.device("meta"):
        reference = build_model(spec.model.name, spec.strategies, **spec.create_kwargs())
    stats = model_stats(reference)
    assert (row["gmacs"], row["gflops"]) == (stats.gmacs, stats.gflops) and stats.gmacs > stats.gflops


@pytest.mark.parametrize("amp", [False, True])
def test_channels_last_gives_the_same_forward_and_gradients(amp, synth_betons, tmp_path):
    # no drop-path: its random draws would differ between the two forward passes
    spec = _spec(synth_betons, tmp_path, f"train.amp_cpu={str(amp).lower()}", "model.drop_path_rate=0.0")
    model = build_start(spec).model
    other = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    xl = x.contiguous(memory_format=torch.channels_last)
    assert xl.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(memory_format=torch.channels_last)
    outs = []
    for net, inp in ((model, x), (other, xl)):
        with recipe.autocast(torch.device("cpu"), spec.train):
            out = net(inp)
        out.float().sum().backward()
        outs.append(out.float())
    tol = dict(rtol=2e-2, atol=2e-2) if amp else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[0], outs[1], **tol)
    torch.testing.assert_close(model.patch_embed.proj.weight.grad, other.patch_embed.proj.weight.grad, **tol)


@pytest.mark.slow  # inductor builds C++ kernels for the forward, backward and eval graphs: minutes on 2 cores
def test_compiled_training_step_and_evaluation_match_eager_on_cpu_inductor(synth_betons, tmp_path):
    # no drop-path: inductor draws its own random numbers, so eager and compiled would drop different paths
    spec = _spec(synth_betons, tmp_path, "train.mixup=0.8", "train.cutmix=1.0", "model.drop_path_rate=0.0")
    device = torch.device("cpu")
    eager = build_start(spec).model
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend="inductor")
    mixup = recipe.build_mixup(spec.train, spec.model.num_classes)
    loss_fn = recipe.build_train_loss(spec.train)
    opts = [recipe.build_optimizer(m, spec.train, 1) for m in (eager, compiled_model)]
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        images = torch.randn(8, 3, 32, 32, generator=g)
        labels = torch.randint(0, 10, (8,), generator=g)
        torch.manual_seed(step)
        images, targets = mixup(images, labels)
        losses = []
        for net, opt in zip((eager, compiled), opts):
            with recipe.autocast(device, spec.train):
                loss = loss_fn(net(images), targets)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-5)
    for a, b in zip(eager.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    from data.loaders import build_val_loader

    val = build_val_loader(spec.data, batch_size=8, device=device)
    with LocalContext(tmp_path / "eval", use_gpu=False, env={}) as ctx:
        top1, top5, n = evaluate(eager, val, spec, ctx, device)
        c_top1, c_top5, c_n = evaluate(torch.compile(eager, backend="inductor"), val, spec, ctx, device)
    assert n == c_n == 16
    assert abs(top1 - c_top1) <= 100 / n and abs(top5 - c_top5) <= 100 / n  # at most one near-tie flips
