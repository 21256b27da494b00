"""Reliability: bad data gives clear errors or exact skip reports.

- a .beton truncated in the middle (an interrupted copy) -> one line naming the file, from the spec
  check, the loaders and a run started on it, never a numpy error or a crashed loader;
- label maps that do not match (class count, train vs val, missing, unreadable, malformed);
- a conversion tree with every kind of bad file -> the exact skip report, and only good images converted.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import rundir as metrics
from data.config import DataConfig
from data.convert import ConvertOptions, convert, skipped_path
from data.labels import label_map_path
from jobs.spec import SpecError, load_spec

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _copy_data(demo_data, dst: Path) -> Path:
    dst.mkdir()
    for split in ("train", "val"):
        shutil.copy(demo_data.root / f"{split}.beton", dst / f"{split}.beton")
        shutil.copy(label_map_path(demo_data.root / f"{split}.beton"), label_map_path(dst / f"{split}.beton"))
    return dst


def _spec_errors(data_root: Path, *overrides: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(DEMO, [f"data_root={data_root}", f"output_root={data_root / 'runs'}", *overrides])
    assert all("\n" not in e for e in info.value.errors)
    return info.value.errors


def _truncate(path: Path, keep: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


@pytest.mark.parametrize("split,where", [("val", "middle"), ("train", "middle"), ("train", "end")])
def test_truncated_beton_is_one_clear_error_everywhere(demo_data, tmp_path, split, where):
    root = _copy_data(demo_data, tmp_path / "data")
    beton = root / f"{split}.beton"
    spec = load_spec(DEMO, [f"data_root={root}", f"output_root={tmp_path / 'runs'}", "run_id=r"])
    # "end": only the last allocation entry lost, the hardest cut to notice
    _truncate(beton, beton.stat().st_size // 2 if where == "middle" else beton.stat().st_size - 24)

    (error,) = _spec_errors(root)
    assert error.startswith(f"data.{split}_path: {beton} is truncated") and "python -m data convert" in error

    from data.loaders import build_train_loader, build_val_loader

    with pytest.raises(ValueError, match=f"{beton} is truncated"):
        if split == "val":
            build_val_loader(spec.data, batch_size=64)
        else:
            build_train_loader(spec.data, batch_size=64, seed=0)

    # a run whose spec was valid when loaded (the file was cut afterwards) stops before building anything
    from jobs.local import LocalContext
    from jobs.train import train_loop

    with LocalContext(spec.run_dir, use_gpu=False) as ctx, pytest.raises(SpecError, match="is truncated"):
        train_loop(spec, ctx)
    status = metrics.read_status(spec.run_dir)
    assert status["state"] == "failed" and f"{beton} is truncated" in status["error"]
    assert not (spec.run_dir / "checkpoints").exists()


def _swap_two(mapping: dict) -> dict:
    a, b = sorted(mapping)[:2]
    return {**mapping, a: mapping[b], b: mapping[a]}


LABEL_CASES = {
    # name: (file to change, new text or None to delete, overrides, expected error substrings)
    "train and val disagree": ("val", lambda m: json.dumps(_swap_two(m)), (), ["class->index maps", "differ"]),
    "missing label map": ("val", None, (), ["val.labels.json (the label map of val.beton) is missing"]),
    "not JSON": ("train", lambda m: "{digit_0: 0", (), ["train.labels.json is not valid JSON"]),
    "indices not 0..N-1": ("train", lambda m: json.dumps({k: v + 1 for k, v in m.items()}), (),
                           ["train.labels.json must map class names to 0..N-1"]),
    "class count vs model": ("train", lambda m: json.dumps({k: v for k, v in m.items() if v < 9}), (),
                             ["train.beton has 9 classes but the model has num_classes=10"]),
}
ERROR_COUNT = {"class count vs model": 2}  # and so train's map differs from val's: a second, true line


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
def test_label_map_that_does_not_match_is_one_clear_error(demo_data, tmp_path, case):
    root = _copy_data(demo_data, tmp_path / "data")
    split, change, overrides, expected = LABEL_CASES[case]
    labels = label_map_path(root / f"{split}.beton")
    if change is None:
        labels.unlink()
    else:
        labels.write_text(change(json.loads(labels.read_text())))
    errors = _spec_errors(root, *overrides)
    assert len(errors) == ERROR_COUNT.get(case, 1), errors
    assert all(s in errors[0] for s in expected), errors
    # the same check guards a run: DataConfig.check is what train_loop calls before anything else
    cfg = DataConfig(train_path=root / "train.beton", val_path=root / "val.beton", img_size=32)
    assert cfg.check(10) == errors


def _img(seed: int, size=(24, 20)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_conversion_tree_with_every_bad_file_kind_gives_an_exact_skip_report(tmp_path):
    src = tmp_path / "src"
    a, b, c = src / "a_good", src / "b_mixed", src / "c_only_bad"
    for d in (a / "nested", b / "dir.jpg", c, src / "d_empty", src / ".hidden_class"):
        d.mkdir(parents=True)
    _img(0).save(a / "rgb.jpg")
    _img(1).convert("L").save(a / "gray.jpg")
    rgba = _img(2).convert("RGBA")
    rgba.putalpha(100)
    rgba.save(a / "alpha.png")
    _img(3).save(a / "nested" / "deep.JPEG")
    _img(4).save(a / "really_a_png.jpg", format="PNG")          # decodable whatever its name says
    _img(5).save(src / ".hidden_class" / "x.jpg")               # hidden folders are not classes
    (b / ".hidden.jpg").write_bytes((a / "rgb.jpg").read_bytes())  # hidden files are not samples
    os.symlink(a / "rgb.jpg", b / "link_to_good.jpg")            # a symlink to a good image is a sample
    os.symlink(tmp_path / "nowhere.jpg", b / "dangling.jpg")     # a symlink to nothing is not
    _img(6, (64, 64)).save(b / "truncated.jpg", quality=95)
    data = (b / "truncated.jpg").read_bytes()
    (b / "truncated.jpg").write_bytes(data[: len(data) // 2])
    _img(7, (64, 64)).save(b / "truncated.png")
    data = (b / "truncated.png").read_bytes()
    (b / "truncated.png").write_bytes(data[: len(data) // 2])
    (b / "zero.jpg").write_bytes(b"")
    (b / "text.jpg").write_text("not a JPEG\n")
    (b / "notes.txt").write_text("not an image name\n")
    (c / "zero.png").write_bytes(b"")

    out = tmp_path / "out" / "train.beton"
    res = convert(src, out, ConvertOptions(max_res=32, write_mode="jpg", workers=1, chunk_size=4), log=lambda *_: None)

    reasons = dict(res.skipped)
    assert sorted(reasons) == ["b_mixed/dangling.jpg", "b_mixed/notes.txt", "b_mixed/text.jpg", "b_mixed/truncated.jpg",
                               "b_mixed/truncated.png", "b_mixed/zero.jpg", "c_only_bad/zero.png"]
    assert "no such file" in reasons["b_mixed/dangling.jpg"].lower()
    assert reasons["b_mixed/notes.txt"].startswith("not an image file name")
    assert reasons["b_mixed/text.jpg"].startswith("not an image")
    assert reasons["b_mixed/truncated.jpg"].startswith("unreadable")
    assert reasons["b_mixed/truncated.png"].startswith("unreadable")
    assert reasons["b_mixed/zero.jpg"].startswith("empty file") and reasons["c_only_bad/zero.png"].startswith("empty file")
    assert res.converted == 6  # 5 in a_good, the symlinked one in b_mixed
    assert res.empty_classes == ["c_only_bad", "d_empty"]
    assert res.num_classes == 2 and json.loads(label_map_path(out).read_text()) == {"a_good": 0, "b_mixed": 1}
    report = skipped_path(out).read_text().splitlines()
    assert report == [f"{p}\t{r}" for p, r in res.skipped] + [
        "c_only_bad/\tempty class folder (no convertible image); not given a label",
        "d_empty/\tempty class folder (no convertible image); not given a label"]

    from ffcv.reader import Reader

    reader = Reader(str(out))
    assert reader.num_samples == 6 and list(reader.metadata["f1"]) == [0] * 5 + [1]
    cfg = DataConfig(train_path=out, val_path=out, img_size=32)
    assert cfg.check(2) == []
