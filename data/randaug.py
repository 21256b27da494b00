"""timm RandAugment applied to a whole batch tensor (on its device), per-sample random choices.

What is timm's and reused as is: the config-string parsing (`rand_augment_transform`: m, n, mstd,
mmax, inc, w), the op list and probabilities, and each op's level -> argument function
(`AugmentOp.level_fn`, including its random sign flips). What is here: the sampling of
AugmentOp.__call__/RandAugment.__call__ done from a torch.Generator (so a batch's augmentation is a
function of its key), and tensor versions of the PIL pixel ops, applied to all samples that chose
the same op at once. Images stay uint8-valued (float storage, rounded after each op) as with PIL.
Geometric ops use bilinear sampling (timm picks bilinear or bicubic at random for PIL).
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.data.auto_augment import AugmentOp, rand_augment_transform
from torchvision.transforms.v2 import functional as TF


@dataclass
class RandAugmentSpec:
    ops: list[AugmentOp]
    num_layers: int
    choice_weights: list[float] | None


def parse_rand_augment(config: str, img_mean: tuple[int, int, int] = (124, 116, 104)) -> RandAugmentSpec:
    """Parse a timm RandAugment string ('rand-m9-mstd0.5-inc1'); ValueError with the reason if bad."""
    if not config.startswith("rand"):
        raise ValueError(f"auto_augment {config!r}: only timm RandAugment strings ('rand-m9-mstd0.5-inc1') are supported")
    try:
        ra = rand_augment_transform(config, {"translate_const": 100, "img_mean": tuple(img_mean)})
    except (AssertionError, ValueError, KeyError) as e:
        raise ValueError(f"auto_augment {config!r} is not a valid timm RandAugment string ({e or 'unknown section'})") from e
    missing = [op.name for op in ra.ops if op.name not in TENSOR_OPS]
    if missing:
        raise ValueError(f"auto_augment {config!r}: ops {missing} have no tensor implementation here")
    w = None if ra.choice_weights is None else [float(x) for x in ra.choice_weights]
    return RandAugmentSpec(list(ra.ops), int(ra.num_layers), w)


# --------------------------------------------------------------------------- tensor ops
# x: float (B, 3, H, W) with integer values 0..255; a: (B,) argument per sample (from level_fn).
# Each op returns integer values again (PIL works on uint8).

def _gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's L conversion (ITU-R 601-2 luma), rounded like PIL."""
    return torch.floor((x[:, 0:1] * 299 + x[:, 1:2] * 587 + x[:, 2:3] * 114) / 1000 + 0.5)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL Image.blend: computed in float, clipped, truncated to uint8."""
    f = factor.view(-1, 1, 1, 1)
    return torch.floor((degenerate + f * (x - degenerate)).clamp(0, 255))


def _auto_contrast(x, a, fill):
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = 255.0 / (hi - lo).clamp(min=1)
    out = torch.floor((x - lo) * scale)
    return torch.where(hi > lo, out, x)


def _equalize(x, a, fill):
    return TF.equalize(x.to(torch.uint8)).to(x.dtype)


def _invert(x, a, fill):
    return 255.0 - x


def _posterize(x, a, fill):
    bits = a.to(torch.int64).clamp(0, 8)
    mask = (255 - (2 ** (8 - bits) - 1)).view(-1, 1, 1, 1)  # keep the `bits` high bits
    return (x.to(torch.int64) & mask).to(x.dtype)


def _solarize(x, a, fill):
    return torch.where(x >= a.view(-1, 1, 1, 1), 255.0 - x, x)


def _solarize_add(x, a, fill):
    return torch.where(x < 128, (x + a.view(-1, 1, 1, 1)).clamp(max=255), x)


def _color(x, a, fill):
    return _blend(_gray(x).expand_as(x), x, a)


def _contrast(x, a, fill):
    mean = torch.floor(_gray(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5)
    return _blend(mean.expand_as(x), x, a)


def _brightness(x, a, fill):
    return _blend(torch.zeros_like(x), x, a)


def _sharpness(x, a, fill):
    k = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device) / 13
    smooth = F.conv2d(x.reshape(-1, 1, *x.shape[2:]), k.view(1, 1, 3, 3)).reshape(x.shape[0], 3, x.shape[2] - 2, -1)
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = torch.floor(smooth + 0.5)  # PIL keeps the 1-pixel border
    return _blend(degenerate, x, a)


def _affine(x: torch.Tensor, m: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """PIL Image.transform(AFFINE) semantics: output pixel (x, y) samples input at m @ (x, y, 1), in
    pixel coordinates whose centres are at +0.5; outside the image -> fill."""
    B, _, H, W = x.shape
    a, b, c, d, e, f = (m[:, k] for k in range(6))
    theta = torch.stack([
        torch.stack([a, b * H / W, a + b * H / W + 2 * c / W - 1], dim=1),
        torch.stack([d * W / H, e, d * W / H + e + 2 * f / H - 1], dim=1),
    ], dim=1).to(x.dtype)
    grid = F.affine_grid(theta, [B, 4, H, W], align_corners=False)
    ones = torch.ones_like(x[:, :1])
    out = F.grid_sample(torch.cat([x, ones], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = out[:, 3:]
    return torch.floor(out[:, :3] + (1 - inside) * fill.view(1, 3, 1, 1) + 0.5)


def _matrix(B, device, **entries) -> torch.Tensor:
    m = torch.zeros(B, 6, device=device)
    m[:, 0] = 1
    m[:, 4] = 1
    for k, v in entries.items():
        m[:, "abcdef".index(k)] = v
    return m


def _rotate(x, a, fill):
    B, _, H, W = x.shape
    ang = -a * math.pi / 180  # PIL rotates counter-clockwise; this is its inverse map
    cx, cy = W / 2, H / 2
    cos, sin = torch.cos(ang), torch.sin(ang)
    m = _matrix(B, x.device, a=cos, b=sin, d=-sin, e=cos,
                c=cx - cos * cx - sin * cy, f=cy + sin * cx - cos * cy)
    return _affine(x, m, fill)


def _shear_x(x, a, fill):
    return _affine(x, _matrix(x.shape[0], x.device, b=a), fill)


def _shear_y(x, a, fill):
    return _affine(x, _matrix(x.shape[0], x.device, d=a), fill)


def _translate_x_rel(x, a, fill):
    return _affine(x, _matrix(x.shape[0], x.device, c=a * x.shape[3]), fill)


def _translate_y_rel(x, a, fill):
    return _affine(x, _matrix(x.shape[0], x.device, f=a * x.shape[2]), fill)


TensorOp = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
TENSOR_OPS: dict[str, TensorOp] = {
    "AutoContrast": _auto_contrast,
    "Equalize": _equalize,
    "Invert": _invert,
    "Rotate": _rotate,
    "Posterize": _posterize,
    "PosterizeIncreasing": _posterize,
    "PosterizeOriginal": _posterize,
    "Solarize": _solarize,
    "SolarizeIncreasing": _solarize,
    "SolarizeAdd": _solarize_add,
    "Color": _color,
    "ColorIncreasing": _color,
    "Contrast": _contrast,
    "ContrastIncreasing": _contrast,
    "Brightness": _brightness,
    "BrightnessIncreasing": _brightness,
    "Sharpness": _sharpness,
    "SharpnessIncreasing": _sharpness,
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateXRel": _translate_x_rel,
    "TranslateYRel": _translate_y_rel,
}


def apply_op(name: str, x: torch.Tensor, arg: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """One op on a batch (every sample with its own argument); like PIL, values stay integers 0..255."""
    return TENSOR_OPS[name](x, arg.to(x.device, x.dtype), fill).clamp(0, 255)


# --------------------------------------------------------------------------- sampling

@dataclass
class Plan:
    """Per layer: op index per sample (-1 = skipped by its probability) and level argument."""
    op: torch.Tensor      # (layers, B) int64
    arg: torch.Tensor     # (layers, B) float64
    magnitude: torch.Tensor  # (layers, B) float64, after noise and clipping


class BatchRandAugment:
    def __init__(self, spec: RandAugmentSpec):
        self.spec = spec

    def sample(self, batch: int, gen: torch.Generator) -> Plan:
        """AugmentOp/RandAugment.__call__'s random choices for `batch` samples, from `gen`."""
        ops, L = self.spec.ops, self.spec.num_layers
        if self.spec.choice_weights is None:
            choice = torch.randint(len(ops), (batch, L), generator=gen)  # with replacement, as np.random.choice
        else:
            w = torch.tensor(self.spec.choice_weights, dtype=torch.float64).expand(batch, -1)
            choice = torch.multinomial(w, L, replacement=False, generator=gen)
        gate = torch.rand(batch, L, generator=gen, dtype=torch.float64)
        noise = torch.randn(batch, L, generator=gen, dtype=torch.float64)
        unif = torch.rand(batch, L, generator=gen, dtype=torch.float64)
        py_seed = int(torch.randint(2**62, (1,), generator=gen))
        op_idx = torch.full((L, batch), -1, dtype=torch.int64)
        arg = torch.zeros(L, batch, dtype=torch.float64)
        mag = torch.zeros(L, batch, dtype=torch.float64)
        # level_fn draws its sign flips from the global `random`; give it a private, seeded state
        state = random.getstate()
        random.seed(py_seed)
        try:
            for b in range(batch):
                for layer in range(L):
                    op = ops[int(choice[b, layer])]
                    if op.prob < 1.0 and float(gate[b, layer]) > op.prob:
                        continue
                    m = float(op.magnitude)
                    if op.magnitude_std == float("inf"):
                        m = float(unif[b, layer]) * m
                    elif op.magnitude_std > 0:
                        m = m + op.magnitude_std * float(noise[b, layer])
                    m = max(0.0, min(m, op.magnitude_max or 10.0))
                    args = op.level_fn(m, op.hparams) if op.level_fn is not None else ()
                    op_idx[layer, b] = int(choice[b, layer])
                    arg[layer, b] = float(args[0]) if args else 0.0
                    mag[layer, b] = m
        finally:
            random.setstate(state)
        return Plan(op_idx, arg, mag)

    def apply(self, x: torch.Tensor, plan: Plan) -> torch.Tensor:
        """x: float (B, 3, H, W), 0..255 integer values; returns a new tensor."""
        fill = torch.tensor(self.spec.ops[0].kwargs["fillcolor"], dtype=x.dtype, device=x.device) \
            if self.spec.ops else torch.zeros(3, dtype=x.dtype, device=x.device)
        for layer in range(plan.op.shape[0]):
            ops = plan.op[layer]
            for k in torch.unique(ops).tolist():
                if k < 0:
                    continue
                sel = (ops == k).nonzero().flatten()
                sel_dev = sel.to(x.device)
                x = x.index_copy(0, sel_dev, apply_op(self.spec.ops[k].name, x.index_select(0, sel_dev),
                                                      plan.arg[layer, sel], fill))
        return x

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self.apply(x, self.sample(x.shape[0], gen))
