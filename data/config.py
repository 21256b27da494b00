"""The data section of a run spec: where the dataset is and how it is augmented.

Defaults are the paper's recipe (DeiT/timm ViT training on ImageNet at 224 px): RandomResizedCrop
(0.08-1, 3/4-4/3) -> flip -> RandAugment rand-m9-mstd0.5-inc1 -> normalize -> random erasing 0.25,
repeated augmentation x3; validation center crop with crop_pct 0.9 (timm's value for
vit_base_patch16_224, which the seed's train.py took from the model's pretrained config).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .holdout import HoldoutConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    train_path: Path = Field(description="Training set: a .beton file (backend ffcv) or an ImageNet-layout folder (backend torch).")
    val_path: Path = Field(description="Validation set, same kind as train_path.")
    backend: Literal["ffcv", "torch"] = Field("ffcv", description="ffcv: .beton files; torch: torchvision ImageFolder reference loader.")
    img_size: int = Field(224, gt=0, description="Side of the square training/validation crops in pixels.")
    num_workers: int = Field(8, ge=0, description="Decode threads (ffcv) or DataLoader processes (torch) per rank.")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Dtype of the image tensors the loaders yield.")
    # train augmentation
    rrc_scale: tuple[float, float] = Field((0.08, 1.0), description="RandomResizedCrop area range (fraction of the image).")
    rrc_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop aspect-ratio range.")
    train_interpolation: Literal["bilinear", "bicubic", "random"] = Field(
        "bilinear",
        description="Resize of the training crops (timm's names). bilinear: ours (bilinear below 2x shrink, "
                    "INTER_AREA beyond); bicubic: PIL's antialiased bicubic; random: one or the other per image "
                    "with probability 1/2 (timm's default for ViT training), drawn from the crop's key.",
    )
    hflip: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip.")
    auto_augment: str | None = Field("rand-m9-mstd0.5-inc1", description="timm RandAugment config string; null disables it.")
    reprob: float = Field(0.25, ge=0, le=1, description="Random-erasing probability per image (timm RandomErasing).")
    remode: Literal["const", "rand", "pixel"] = Field("pixel", description="Random-erasing fill mode (timm).")
    recount: int = Field(1, ge=1, description="Maximum number of erased boxes per image (timm).")
    erase_order: Literal["per_image", "after_mixup"] = Field(
        "per_image",
        description="When random erasing runs: per_image = on each augmented image before mixup/cutmix; "
                    "after_mixup = on the already mixed, normalized batch, as timm's train.py does with its "
                    "prefetcher (the default there), so an erased box is noise over the mixed image.",
    )
    aug_repeats: int = Field(3, ge=1, description="Repeated augmentation (DeiT RASampler): copies of each sample per epoch; 1 disables.")
    ra_selected_round: int = Field(
        256, ge=0,
        description="RASampler epoch length: floor(N / round) * round / world samples per rank (DeiT); 0 = ceil(N / world).",
    )
    # validation
    crop_pct: float = Field(0.9, gt=0, le=1,
                            description="Validation center crop: crop side / shorter image side (timm; 0.9 is "
                                        "vit_base_patch16_224's, 0.875 timm's generic default).")
    val_interpolation: Literal["area", "bicubic"] = Field(
        "area",
        description="Resize of the validation crop: area = FFCV's center-crop decoder (OpenCV INTER_AREA); "
                    "bicubic = PIL's antialiased bicubic of the full-resolution crop (timm's, DeiT's, Swin's eval "
                    "resize, up to where the filter reads at the crop's border).",
    )
    holdout: HoldoutConfig | None = Field(
        None, description="Score on a class-balanced slice of train_path held out of training instead of on "
                          "val_path (tuning trials; data.holdout); null: train on all of train_path, score on val.")
    # normalisation
    mean: tuple[float, float, float] = Field(IMAGENET_MEAN, description="Per-channel mean of [0, 1] pixels.")
    std: tuple[float, float, float] = Field(IMAGENET_STD, description="Per-channel std of [0, 1] pixels.")
    # ffcv reader
    os_cache: bool = Field(True, description="ffcv: memory-map the .beton through the OS page cache (shared by the ranks of a node).")
    batches_ahead: int = Field(3, ge=1, description="ffcv: batches prepared in advance.")
    fast_resize: bool = Field(True, description="ffcv train crops: bilinear resize when shrinking < 2x (7x cheaper than INTER_AREA; same crops).")
    dct_scaling: bool = Field(True, description="ffcv: decode JPEGs at 1/2-1/8 scale when the crop is >= 2x the output (faster, same crops).")
    crop_decode: bool = Field(True, description="ffcv train crops: decode only the crop region of baseline JPEGs (data/jpegcrop.c; same crops).")

    @field_validator("rrc_scale", "rrc_ratio")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"must be 0 < low <= high, got {list(v)}")
        return v

    @field_validator("auto_augment")
    @classmethod
    def _randaugment_string(cls, v: str | None) -> str | None:
        if v is None or v == "" or v.lower() == "none":
            return None
        from .randaug import parse_rand_augment

        parse_rand_augment(v)  # raises ValueError with the reason
        return v

    @model_validator(mode="after")
    def _std_positive(self) -> "DataConfig":
        if min(self.std) <= 0:
            raise ValueError("std: every channel must be > 0")
        return self

    def check(self, num_classes: int) -> list[str]:
        """Cheap checks of the files (one line each, all at once): existence, kind, label maps."""
        from .labels import read_label_map

        errors: list[str] = []
        maps: dict[str, dict[str, int]] = {}
        for field in ("train_path", "val_path"):
            path: Path = getattr(self, field)
            if not path.exists():
                hint = "python -m data prepare-demo DIR or python -m data convert SRC OUT.beton"
                errors.append(f"data.{field}: {path} does not exist (create it with {hint})")
                continue
            if self.backend == "ffcv" and not (path.is_file() and path.suffix == ".beton"):
                errors.append(f"data.{field}: backend ffcv needs a .beton file, got {path} "
                              f"(convert it with python -m data convert, or set data.backend=torch)")
                continue
            if self.backend == "torch" and not path.is_dir():
                errors.append(f"data.{field}: backend torch needs an ImageNet-layout folder, got {path} "
                              f"(or set data.backend=ffcv for .beton files)")
                continue
            if self.backend == "ffcv":
                problem = beton_problem(path)
                if problem:
                    errors.append(f"data.{field}: {path} {problem} (convert it again with python -m data convert)")
                    continue
            try:
                maps[field] = read_label_map(path)
            except (OSError, ValueError) as e:
                errors.append(f"data.{field}: {e}")
                continue
            if len(maps[field]) != num_classes:
                errors.append(f"data.{field}: {path} has {len(maps[field])} classes but the model has "
                              f"num_classes={num_classes} (set model num_classes={len(maps[field])})")
        if len(maps) == 2 and maps["train_path"] != maps["val_path"]:
            errors.append(f"data: the class->index maps of {self.train_path} and {self.val_path} differ "
                          f"(convert val with the same class folders as train)")
        return errors


def beton_problem(path: Path) -> str | None:
    """Why a .beton cannot be read (truncated copy, not a .beton, other ffcv version), or None.

    Cheap: reads the header and the allocation table (tens of bytes per sample), not the images, once
    per file version (a study checks the same two files for every run). ffcv's own Reader fails on a
    truncated file with a bare numpy error, and its memory-mapped sample reads past the end would crash
    the loader process (SIGBUS) instead of raising."""
    st = Path(path).stat()
    return _beton_problem(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _beton_problem(path: str, size: int, _mtime_ns: int) -> str | None:
    import numpy as np

    from .ffcv_api import ALLOC_TABLE_TYPE, CURRENT_VERSION, HeaderType

    if size < HeaderType.itemsize:
        return f"is {size} bytes, shorter than a .beton header (truncated?)"
    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    if int(header["version"]) != CURRENT_VERSION:
        return f"has format version {int(header['version'])}, this ffcv reads {CURRENT_VERSION} (or it is not a .beton)"
    table_at = int(header["alloc_table_ptr"])
    if table_at > size or (size - table_at) % ALLOC_TABLE_TYPE.itemsize:
        return f"is truncated: {size} bytes, but its allocation table starts at byte {table_at}"
    table = np.fromfile(path, dtype=ALLOC_TABLE_TYPE, offset=table_at)
    if int(header["num_samples"]) and not len(table):
        return f"is truncated: no allocation table for its {int(header['num_samples'])} samples"
    if len(table) and len(np.unique(table["sample_id"])) != int(header["num_samples"]):
        return (f"is truncated: its allocation table covers {len(np.unique(table['sample_id']))} of "
                f"{int(header['num_samples'])} samples")
    if len(table) and int((table["ptr"] + table["size"]).max()) > table_at:
        return f"is damaged: sample data points past its allocation table at byte {table_at}"
    return None
