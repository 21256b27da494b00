"""The FFCV names the data package uses, imported here and only here, so that no process compiles a numba typed
Dict it never needs.

FFCV 1.0.2 defines `ffcv.fields.rgb_image.IMAGE_MODES` ({'jpg': 0, 'raw': 1}) as a numba typed Dict at import.
Compiling that Dict's methods makes FFCV's import cost 4.1 s more CPU in every process that imports it: each
training process, Ray Train worker, Tune trial and Slurm task (bench/import_cost.py, BENCHMARKS.md). FFCV reads
IMAGE_MODES only from Python, never inside jitted code, so a plain dict gives the same lookups. We import FFCV
once with `numba.typed.Dict` standing in as `dict`, then restore it. This depends on FFCV's module body, so it
applies to the pinned version only (pyproject.toml). Any other version is imported unchanged, and
tests/test_ffcv_api.py fails with the reason.
The `import-linter` contract "ffcv-through-one-module" keeps every other module of ours importing from here.
"""
from __future__ import annotations

import sys
from importlib.metadata import version

PATCHED_FOR = "1.0.2"


def _import_ffcv_without_typed_dict() -> None:
    if "ffcv.fields.rgb_image" in sys.modules or version("ffcv") != PATCHED_FOR:
        return  # imported already, or a version this was not checked against: FFCV's own import
    import numba.typed

    typed_dict = numba.typed.Dict
    numba.typed.Dict = dict  # read by `from numba.typed import Dict` in FFCV's modules during this import
    try:
        import ffcv.fields.rgb_image  # noqa: F401
    finally:
        numba.typed.Dict = typed_dict


_import_ffcv_without_typed_dict()

from ffcv.fields import IntField, RGBImageField  # noqa: E402
from ffcv.fields.basics import IntDecoder  # noqa: E402
from ffcv.fields.rgb_image import IMAGE_MODES, CenterCropRGBImageDecoder, ResizedCropRGBImageDecoder  # noqa: E402
from ffcv.libffcv import imdecode, resize_crop  # noqa: E402
from ffcv.loader import Loader  # noqa: E402
from ffcv.pipeline.compiler import Compiler  # noqa: E402
from ffcv.reader import Reader  # noqa: E402
from ffcv.transforms import ToDevice, ToTensor  # noqa: E402
from ffcv.traversal_order.base import TraversalOrder  # noqa: E402
from ffcv.types import (  # noqa: E402
    ALLOC_TABLE_TYPE,
    CURRENT_VERSION,
    FieldDescType,
    HeaderType,
    get_handlers,
    get_metadata_type,
)
from ffcv.writer import DatasetWriter  # noqa: E402

__all__ = ["ALLOC_TABLE_TYPE", "CURRENT_VERSION", "IMAGE_MODES", "CenterCropRGBImageDecoder", "Compiler",
           "DatasetWriter", "FieldDescType", "HeaderType", "IntDecoder", "IntField", "Loader", "RGBImageField",
           "Reader", "ResizedCropRGBImageDecoder", "ToDevice", "ToTensor", "TraversalOrder", "get_handlers",
           "get_metadata_type", "imdecode", "resize_crop"]
