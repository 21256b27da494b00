"""data.ffcv_api imports FFCV without compiling the numba typed Dict that FFCV 1.0.2 builds for two constants.

The stand-in depends on FFCV's module body, so it is tied to one FFCV version: on any other these tests fail and
say what to re-check. What it saves is measured by bench/import_cost.py (BENCHMARKS.md), not here.
"""
from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _in_fresh_process(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_ffcv_is_the_version_the_stand_in_was_checked_against():
    from data import ffcv_api

    assert version("ffcv") == ffcv_api.PATCHED_FOR, (
        f"FFCV {version('ffcv')} is installed, data/ffcv_api.py was checked against {ffcv_api.PATCHED_FOR}: "
        "check that ffcv/fields/rgb_image.py still reads IMAGE_MODES only from Python (not in jitted code), "
        "then update PATCHED_FOR and the pin in pyproject.toml")


def test_image_modes_become_a_plain_dict_and_numba_is_left_as_it_was():
    got = _in_fresh_process(
        "import json, numba.typed\n"
        "typed = numba.typed.Dict\n"
        "from data import ffcv_api\n"
        "import ffcv.fields.rgb_image as rgb\n"
        "print(json.dumps({'type': type(rgb.IMAGE_MODES).__name__, 'modes': dict(rgb.IMAGE_MODES),\n"
        "                  'same_object': rgb.IMAGE_MODES is ffcv_api.IMAGE_MODES,\n"
        "                  'numba_restored': numba.typed.Dict is typed}))")
    assert got == {"type": "dict", "modes": {"jpg": 0, "raw": 1}, "same_object": True, "numba_restored": True}


def test_a_process_that_imported_ffcv_first_keeps_ffcvs_own_dict():
    got = _in_fresh_process(
        "import json\n"
        "import ffcv\n"
        "from data import ffcv_api\n"
        "print(json.dumps({'type': type(ffcv_api.IMAGE_MODES).__name__}))")
    assert got == {"type": "Dict"}


def test_beton_written_and_read_through_the_stand_in_decodes(tmp_path, demo_data):
    """A conversion (RGBImageField.encode looks the mode up) and a decode (the decoders read it) on the demo data."""
    from data.config import DataConfig
    from data.loaders import build_val_loader

    cfg = DataConfig(train_path=demo_data.train_beton, val_path=demo_data.val_beton, img_size=32, num_workers=1,
                     aug_repeats=1, ra_selected_round=0)
    val = build_val_loader(cfg, batch_size=64)
    val.set_epoch(0)
    x, y = next(iter(val))
    assert x.shape[0] == y.shape[0] > 0 and float(x.float().std()) > 0
