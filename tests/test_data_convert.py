"""Conversion: bad inputs (exact converted/skipped counts), label maps, re-run skip, errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.convert import ConvertError, ConvertOptions, convert, convert_any, skipped_path
from data.labels import folder_label_map, label_map_path, read_label_map, write_label_map

OPTS = ConvertOptions(max_res=48, write_mode="jpg", workers=1, chunk_size=4)


def _img(seed: int, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def make_bad_tree(root: Path) -> Path:
    a, b = root / "n01_alpha", root / "n02_beta"
    (a / "nested").mkdir(parents=True)
    b.mkdir()
    (root / "n03_empty").mkdir()
    (root / "n04_only_bad").mkdir()
    _img(0).save(a / "good.jpg")
    _img(1).convert("L").save(a / "gray.jpg")
    _img(2).convert("CMYK").save(a / "cmyk.jpg")
    rgba = _img(3).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(a / "alpha.png")
    _img(4, (200, 100)).save(a / "UPPER.JPEG")  # larger than max_res: resized
    _img(5).save(a / "nested" / "deep.jpeg")
    _img(6).save(b / "good.png")
    full = (a / "good.jpg").read_bytes()
    _img(7, (64, 64)).save(b / "truncated.jpg", quality=95)
    data = (b / "truncated.jpg").read_bytes()
    (b / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (b / "zero.jpg").write_bytes(b"")
    (b / "notimage.jpg").write_text("this is not a JPEG\n")
    (b / "readme.txt").write_text("notes\n")
    (root / "n04_only_bad" / "zero.JPG").write_bytes(b"")
    assert len(full) > 0
    return root


def _read_beton(path: Path):
    """(num_samples, labels, image metadata) from the .beton's metadata table (fields f0=image, f1=label)."""
    from ffcv.reader import Reader

    r = Reader(str(path))
    return r.num_samples, r.metadata["f1"], r.metadata["f0"]


def test_bad_inputs_exact_counts(tmp_path):
    src = make_bad_tree(tmp_path / "src")
    out = tmp_path / "out" / "train.beton"
    res = convert(src, out, OPTS, log=lambda *_: None)
    assert res.converted == 7
    reasons = dict(res.skipped)
    assert sorted(reasons) == sorted([
        "n02_beta/truncated.jpg", "n02_beta/zero.jpg", "n02_beta/notimage.jpg", "n02_beta/readme.txt",
        "n04_only_bad/zero.JPG"])
    assert "truncated" in reasons["n02_beta/truncated.jpg"] or "unreadable" in reasons["n02_beta/truncated.jpg"]
    assert reasons["n02_beta/zero.jpg"].startswith("empty file")
    assert reasons["n02_beta/notimage.jpg"].startswith("not an image")
    assert reasons["n02_beta/readme.txt"].startswith("not an image file name")
    assert res.empty_classes == ["n03_empty", "n04_only_bad"]
    assert res.recoded == {"L": 1, "CMYK": 1, "RGBA": 1}
    assert res.num_classes == 2
    report = skipped_path(out).read_text().splitlines()
    assert len(report) == 5 + 2 and all("\t" in line for line in report)
    assert "skipped 5 files" in res.summary() and "2 empty class folders" in res.summary()
    n, labels, images = _read_beton(out)
    assert n == 7
    assert list(labels) == [0] * 6 + [1]
    assert int(images["width"].max()) == 48 and int(images["height"].max()) <= 48  # UPPER.JPEG 200x100 -> 48x24
    assert read_label_map(out) == {"n01_alpha": 0, "n02_beta": 1}
    assert not list(out.parent.glob("*.partial-*"))


def test_rgb_conversion_of_special_modes(tmp_path):
    """Grayscale/CMYK/alpha images decode to the right RGB pixels (checked through the loader's decoder)."""
    from data.images import load_rgb

    src = make_bad_tree(tmp_path / "src")
    gray, mode = load_rgb(src / "n01_alpha" / "gray.jpg", None)
    assert mode == "L" and gray.shape == (30, 40, 3) and (gray[..., 0] == gray[..., 2]).all()
    cmyk, mode = load_rgb(src / "n01_alpha" / "cmyk.jpg", None)
    ref = np.asarray(_img(2))
    assert mode == "CMYK" and np.abs(cmyk.astype(int) - ref).mean() < 20
    alpha, mode = load_rgb(src / "n01_alpha" / "alpha.png", None)
    expected = (np.asarray(_img(3)).astype(float) * 128 / 255 + 255 * (1 - 128 / 255))
    assert mode == "RGBA" and np.abs(alpha - expected).max() <= 1.5  # composited over white


def test_page_size_fits_the_largest_image():
    from data.images import page_size_for

    assert page_size_for(32 * 32) == 2 << 20  # the demo: small file
    assert page_size_for(500 * 500) == 8 << 20  # ffcv-imagenet's default for max side 500
    big = 6000 * 4000  # --max-res none with a 24 MP photo: must still fit in one page
    assert page_size_for(big) >= 3 * big and page_size_for(big) & (page_size_for(big) - 1) == 0


def test_label_map_round_trip(tmp_path):
    m = {"n02": 1, "n01": 0, "zebra": 2}
    beton = tmp_path / "x.beton"
    write_label_map(beton, m)
    assert label_map_path(beton).name == "x.labels.json"
    assert read_label_map(beton) == m
    label_map_path(beton).write_text(json.dumps({"a": 0, "b": 5}))
    with pytest.raises(ValueError, match="0..N-1"):
        read_label_map(beton)
    with pytest.raises(ValueError, match="missing"):
        read_label_map(tmp_path / "other.beton")
    src = make_bad_tree(tmp_path / "src")
    assert folder_label_map(src) == {"n01_alpha": 0, "n02_beta": 1}


def test_rerun_is_skipped_and_changes_reconvert(tmp_path):
    src = tmp_path / "src"
    for c in range(2):
        (src / f"c{c}").mkdir(parents=True)
        for i in range(3):
            _img(10 * c + i).save(src / f"c{c}" / f"{i}.jpg")
    out = tmp_path / "d.beton"
    first = convert(src, out, OPTS, log=lambda *_: None)
    mtime = out.stat().st_mtime_ns
    again = convert(src, out, OPTS, log=lambda *_: None)
    assert again.up_to_date and again.converted == first.converted == 6 and out.stat().st_mtime_ns == mtime
    logs: list[str] = []
    changed = convert(src, out, ConvertOptions(max_res=32, write_mode="jpg", workers=1), log=logs.append)
    assert not changed.up_to_date and any("options changed" in line for line in logs)
    _img(99).save(src / "c1" / "new.jpg")
    logs.clear()
    assert convert(src, out, ConvertOptions(max_res=32, write_mode="jpg", workers=1), log=logs.append).converted == 7
    assert any("source_fingerprint changed" in line for line in logs)


def test_interrupted_partial_is_removed_and_never_looks_complete(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    _img(0).save(src / "a" / "0.jpg")
    out = tmp_path / "d.beton"
    stale = tmp_path / "d.beton.partial-12345"
    stale.write_bytes(b"half written")
    logs: list[str] = []
    convert(src, out, OPTS, log=logs.append)
    assert not stale.exists() and out.exists() and any("interrupted" in line for line in logs)


def test_bad_src_errors(tmp_path):
    with pytest.raises(ConvertError, match="does not exist"):
        convert(tmp_path / "missing", tmp_path / "o.beton", OPTS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvertError, match="no class folder with images"):
        convert(tmp_path / "empty", tmp_path / "o.beton", OPTS)
    with pytest.raises(ConvertError, match="must end in .beton"):
        convert(tmp_path / "empty", tmp_path / "o.bin", OPTS)
    with pytest.raises(ConvertError, match="--jpeg-quality"):
        convert(tmp_path / "empty", tmp_path / "o.beton", ConvertOptions(jpeg_quality=0))


def test_train_val_pair_and_cli(tmp_path):
    src = tmp_path / "imnet"
    for split, n in (("train", 3), ("val", 2)):
        for c in ("n1", "n2"):
            (src / split / c).mkdir(parents=True)
            for i in range(n):
                _img(i).save(src / split / c / f"{i}.JPEG")
    (src / "val" / "n3_unknown").mkdir()
    _img(0).save(src / "val" / "n3_unknown" / "x.jpg")
    res = convert_any(src, tmp_path / "out", OPTS, log=lambda *_: None)
    assert [r.converted for r in res] == [6, 4]
    assert read_label_map(tmp_path / "out" / "val.beton") == read_label_map(tmp_path / "out" / "train.beton")
    assert "not in the training label map" in dict(res[1].skipped)["n3_unknown/x.jpg"]
    cmd = [sys.executable, "-m", "data", "convert", str(tmp_path / "nope"), str(tmp_path / "x.beton")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "does not exist" in p.stderr
    cmd = [sys.executable, "-m", "data", "convert", str(src / "train"), str(tmp_path / "t.beton"),
           "--max-res", "32", "--write-mode", "raw", "--workers", "1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "converted 6 images of 2 classes" in p.stdout


def test_prepare_demo_counts_and_idempotence(demo_data):
    from ffcv.reader import Reader

    from data.demo import prepare_demo

    assert Reader(str(demo_data.train_beton)).num_samples == 1437
    assert Reader(str(demo_data.val_beton)).num_samples == 360
    assert read_label_map(demo_data.train_beton) == read_label_map(demo_data.val_beton) == \
        {f"digit_{c}": c for c in range(10)}
    assert len(list(demo_data.train_dir.rglob("*.jpg"))) == 1437
    assert Image.open(next(demo_data.val_dir.rglob("*.jpg"))).size == (32, 32)
    before = {p: p.stat().st_mtime_ns for p in (demo_data.train_beton, demo_data.val_beton)}
    logs: list[str] = []
    again = prepare_demo(demo_data.root, log=logs.append)
    assert again == demo_data and logs == []
    assert {p: p.stat().st_mtime_ns for p in before} == before


def _raw_images(path: Path) -> list[np.ndarray]:
    """Every stored image of a write_mode=raw .beton, read at its data pointer."""
    n, _, images = _read_beton(path)
    data = np.fromfile(path, np.uint8)
    out = []
    for m in images:
        assert int(m["mode"]) == 1  # raw
        size = int(m["height"]) * int(m["width"]) * 3
        out.append(data[int(m["data_ptr"]):int(m["data_ptr"]) + size].reshape(int(m["height"]), int(m["width"]), 3))
    assert len(out) == n
    return out


@pytest.mark.parametrize("caps", [{"max_res": 48}, {"max_res": None}, {"max_res": None, "min_side": 64}])
def test_failed_decode_is_dropped_in_the_write_pass(tmp_path, caps):
    """Files that fail only when decoded (a truncated JPEG passes the header read) are skipped and listed,
    a class left without images loses its label, the other labels are renumbered, and every kept sample
    still points at its own pixels (the tables were compacted, not the data)."""
    src = tmp_path / "src"
    good: dict[str, list[np.ndarray]] = {}
    for c, files in {"a": ["0", "1_bad", "2"], "b": ["0_bad"], "c": ["0", "1"]}.items():
        (src / c).mkdir(parents=True)
        for f in files:
            img = _img(hash((c, f)) % 1000, (40, 30))
            if f.endswith("_bad"):
                img.save(src / c / f"{f}.jpg", quality=95)
                data = (src / c / f"{f}.jpg").read_bytes()
                (src / c / f"{f}.jpg").write_bytes(data[: len(data) // 2])
            else:
                img.save(src / c / f"{f}.png")
                good.setdefault(c, []).append(np.asarray(img))
    out = tmp_path / "d.beton"
    res = convert(src, out, ConvertOptions(write_mode="raw", workers=2, chunk_size=2, **caps), log=lambda *_: None)
    assert res.converted == 4 and res.num_classes == 2
    assert sorted(dict(res.skipped)) == ["a/1_bad.jpg", "b/0_bad.jpg"]
    assert all(r.startswith("unreadable") for _, r in res.skipped)
    assert res.empty_classes == ["b"]
    assert read_label_map(out) == {"a": 0, "c": 1}
    assert skipped_path(out).read_text().count("\n") == 3
    n, labels, _ = _read_beton(out)
    assert n == 4 and list(labels) == [0, 0, 1, 1]
    for got, want in zip(_raw_images(out), good["a"] + good["c"]):
        assert np.array_equal(got, want)
    from data.config import beton_problem

    assert beton_problem(out) is None
    reader_loader_labels = _loader_labels(out)
    assert reader_loader_labels == [0, 0, 1, 1]


def _loader_labels(path: Path) -> list[int]:
    """Labels as ffcv's own Loader reads them (allocation table included)."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption

    loader = Loader(str(path), batch_size=4, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": None, "label": [IntDecoder()]})
    return [int(x) for (labels,) in loader for x in labels.reshape(-1)]


def test_all_files_failing_at_write_time_is_one_clear_error(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x.jpg").write_text("not a JPEG\n")
    with pytest.raises(ConvertError, match=r"no readable image .*x\.jpg: not an image"):
        convert(src, tmp_path / "d.beton", OPTS, log=lambda *_: None)
    assert not list(tmp_path.glob("d.beton*"))


def test_shortest_side_cap_keeps_resolution_where_longest_side_cap_loses_it(tmp_path):
    """A 500x375 photo: --max-res 256 stores 256x192 (its 0.9 val crop would be 173 px), --min-side 256
    stores 341x256, aspect kept; through the CLI, --min-side alone lifts the default longest-side cap."""
    from data.__main__ import main

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    photo = _img(3, (500, 375))
    photo.save(src / "a" / "p.JPEG", quality=95)
    photo.rotate(90, expand=True).save(src / "a" / "q.JPEG", quality=95)  # 375x500: portrait
    _img(4, (200, 150)).save(src / "a" / "small.JPEG")  # below both caps: untouched
    sizes = {}
    for name, flags in {"max": ["--max-res", "256"], "min": ["--min-side", "256"]}.items():
        out = tmp_path / f"{name}.beton"
        assert main(["convert", str(src), str(out), "--write-mode", "raw", "--workers", "1", *flags]) == 0
        _, _, images = _read_beton(out)
        sizes[name] = [(int(m["width"]), int(m["height"])) for m in images]
    assert sizes["max"] == [(256, 192), (192, 256), (200, 150)]
    assert sizes["min"] == [(341, 256), (256, 341), (200, 150)]
    small = _raw_images(tmp_path / "min.beton")[0]
    ref = cv2_area(np.asarray(Image.open(src / "a" / "p.JPEG").convert("RGB")), (341, 256))
    assert np.array_equal(small, ref)  # full decode (a 1/2 DCT scale would go below 256), then INTER_AREA
    with pytest.raises(ConvertError, match="--min-side"):
        convert(src, tmp_path / "x.beton", ConvertOptions(min_side=4))


def cv2_area(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)
