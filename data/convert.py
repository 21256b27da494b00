"""ImageNet-layout JPEG tree -> FFCV .beton (`python -m data convert SRC OUT.beton`).

One pass over the image data: ffcv's DatasetWriter decodes and encodes every file; a file that
fails to decode (truncated, not an image, too large) is recorded by the writer process, stored as a
1-pixel placeholder, and removed from the finished file afterwards (data.beton_edit: only the small
metadata and allocation tables are rewritten), because the writer needs the sample count up front
and cannot skip an index once started. The .beton is written under a temporary name and renamed at
the end; `<stem>.convert.json` records the source fingerprint and options so a re-run with the same
input is skipped.

Defaults reproduce ffcv-imagenet's published files (longest side 500, 'proportion', 50% JPEG,
quality 90). For the paper's 224 px training a smaller file is enough: `--min-side 256 --write-mode jpg`
caps the SHORTEST side at 256 (a 500x375 photo is stored at 341x256), so RandomResizedCrop at scale 1
and the 0.9 validation crop (230 px) still see >= 224 px. `--max-res` caps the LONGEST side instead:
`--max-res 256` stores that photo at 256x192, and its validation crop (172 px) is upscaled to 224.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing import Pool, cpu_count
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .images import failure_reason, header_size, load_rgb, page_size_for, target_size
from .labels import class_folders, is_image_name, walk_class, write_label_map

WRITE_MODES = ("raw", "jpg", "smart", "proportion")


class ConvertError(Exception):
    """Bad input for a conversion (one line, shown to the user)."""


@dataclass(frozen=True)
class ConvertOptions:
    max_res: int | None = 500  # longest side after resizing (ffcv's max_resolution); None: no cap
    min_side: int | None = None  # shortest side after resizing (aspect kept); None: no cap
    write_mode: str = "proportion"
    jpeg_quality: int = 90
    compress_probability: float = 0.5
    smart_threshold: int = 3 * 256 * 256  # 'smart': JPEG only when the raw pixels exceed this many bytes
    workers: int = field(default_factory=lambda: max(1, cpu_count()), compare=False)
    chunk_size: int = field(default=100, compare=False)

    def errors(self) -> list[str]:
        errs = []
        if self.write_mode not in WRITE_MODES:
            errs.append(f"--write-mode: {self.write_mode!r} is not one of {', '.join(WRITE_MODES)}")
        if self.max_res is not None and self.max_res < 8:
            errs.append(f"--max-res: {self.max_res} is too small (use >= 8, e.g. 500)")
        if self.min_side is not None and self.min_side < 8:
            errs.append(f"--min-side: {self.min_side} is too small (use >= 8, e.g. 256 for 224 px training)")
        if not 1 <= self.jpeg_quality <= 100:
            errs.append(f"--jpeg-quality: {self.jpeg_quality} must be in 1..100")
        if not 0 <= self.compress_probability <= 1:
            errs.append(f"--compress-probability: {self.compress_probability} must be in [0, 1]")
        if self.workers < 1:
            errs.append(f"--workers: {self.workers} must be >= 1")
        if self.chunk_size < 1:
            errs.append(f"--chunk-size: {self.chunk_size} must be >= 1")
        return errs

    def fingerprint(self) -> dict:
        d = asdict(self)
        d.pop("workers")
        d.pop("chunk_size")
        if d["min_side"] is None:  # files converted before the option existed stay up to date
            d.pop("min_side")
        return d


@dataclass
class ConvertResult:
    out: Path
    converted: int
    skipped: list[tuple[str, str]]  # (path relative to SRC, reason)
    empty_classes: list[str]
    num_classes: int
    recoded: dict[str, int]  # source mode -> count converted to RGB
    seconds: float
    up_to_date: bool = False

    def summary(self) -> str:
        if self.up_to_date:
            return f"{self.out}: up to date ({self.converted} images, {self.num_classes} classes); nothing to do"
        rate = self.converted / self.seconds if self.seconds > 0 else 0.0
        s = (f"{self.out}: converted {self.converted} images of {self.num_classes} classes in "
             f"{self.seconds:.1f}s ({rate:.0f} img/s); skipped {len(self.skipped)} files")
        if self.skipped or self.empty_classes:
            s += f" (see {skipped_path(self.out).name})"
        if self.empty_classes:
            s += f"; {len(self.empty_classes)} empty class folders ignored"
        if self.recoded:
            s += "; converted to RGB: " + ", ".join(f"{n} {m}" for m, n in sorted(self.recoded.items()))
        return s


def skipped_path(out: Path) -> Path:
    return out.with_name(out.stem + ".skipped.txt")


def meta_path(out: Path) -> Path:
    return out.with_name(out.stem + ".convert.json")


class _TreeDataset:
    """(image, label) for FFCV's writer. A file that fails to decode is appended to `events` with its
    reason and stored as a 1-pixel placeholder (a raising writer process would hang the writer);
    non-RGB source modes are appended too. Lines are short single writes to an O_APPEND file, so the
    writer processes never interleave them."""

    def __init__(self, paths: list[str], labels: list[int], opts: ConvertOptions, events: str):
        self.paths, self.labels, self.events = paths, labels, events
        self.max_res, self.min_side = opts.max_res, opts.min_side

    def __len__(self) -> int:
        return len(self.paths)

    def _note(self, kind: str, i: int, text: str) -> None:
        line = " ".join(text.split("\n"))
        with open(self.events, "a") as f:
            f.write(f"{kind}\t{i}\t{line}\n")

    def __getitem__(self, i: int):
        try:
            arr, mode = load_rgb(Path(self.paths[i]), self.max_res, self.min_side)
        except Exception as e:  # noqa: BLE001 - any decode failure of one file must not stop the run
            self._note("fail", i, failure_reason(self.paths[i], e))
            return np.zeros((1, 1, 3), np.uint8), self.labels[i]
        if mode != "RGB":
            self._note("mode", i, mode)
        return arr, self.labels[i]


# --------------------------------------------------------------------------- scanning

def _scan(src: Path, label_map: dict[str, int] | None):
    """Candidate files (path, class name), skipped files, source fingerprint; ImageFolder order."""
    candidates: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    fp = hashlib.sha256()
    for name in class_folders(src):
        for p in walk_class(src, name):
            try:
                st = p.stat()
            except OSError as e:  # a dangling symlink, a file removed or unreadable meanwhile
                fp.update(f"{p.relative_to(src)}\0{type(e).__name__}\n".encode())
                skipped.append((str(p), f"unreadable ({type(e).__name__}: {e.strerror})"))
                continue
            fp.update(f"{p.relative_to(src)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            if st.st_size == 0:
                skipped.append((str(p), "empty file (0 bytes)"))
            elif not is_image_name(p):
                skipped.append((str(p), f"not an image file name (extension {p.suffix or 'none'!r})"))
            elif label_map is not None and name not in label_map:
                skipped.append((str(p), f"class folder {name!r} is not in the training label map"))
            else:
                candidates.append((str(p), name))
    return candidates, skipped, fp.hexdigest()


def _header_sizes(paths: list[str], workers: int) -> list[tuple[str | None, tuple[int, int]]]:
    bar = dict(total=len(paths), desc="sizes", unit="img", file=sys.stderr, mininterval=1.0)
    if workers <= 1 or len(paths) < 20000:
        return [header_size(p) for p in tqdm(paths, **bar)]
    with Pool(workers) as pool:
        return list(tqdm(pool.imap(header_size, paths, chunksize=256), **bar))


def _max_pixels(paths: list[str], opts: ConvertOptions, skipped: list[tuple[str, str]]) -> tuple[list[str], int]:
    """The files to write and the most pixels one of them holds once resized (it sizes the pages).
    A longest-side cap bounds it without reading anything; otherwise the headers are read (a few
    hundred bytes per file), and files whose header is unreadable are skipped here already."""
    if opts.max_res is not None:
        return paths, opts.max_res * opts.max_res
    keep, most = [], 1
    for p, (reason, size) in zip(paths, _header_sizes(paths, opts.workers)):
        if reason is not None:
            skipped.append((p, reason))
            continue
        keep.append(p)
        w, h = target_size(size, None, opts.min_side) or size
        most = max(most, (w + 1) * (h + 1))  # a DCT-scaled decode can round a side up by one pixel
    return keep, most


def _write(out_tmp: Path, paths: list[str], labels: list[int], opts: ConvertOptions, events: Path,
           max_pixels: int) -> None:
    from .ffcv_api import DatasetWriter, IntField, RGBImageField

    fields = {
        "image": RGBImageField(write_mode=opts.write_mode, max_resolution=opts.max_res,
                               smart_threshold=opts.smart_threshold, jpeg_quality=opts.jpeg_quality,
                               compress_probability=opts.compress_probability),
        "label": IntField(),
    }
    writer = DatasetWriter(str(out_tmp), fields, page_size=page_size_for(max_pixels),
                           num_workers=min(opts.workers, max(1, len(paths))))
    writer.from_indexed_dataset(_TreeDataset(paths, labels, opts, str(events)), chunksize=opts.chunk_size)


def _read_events(events: Path) -> tuple[dict[int, str], Counter[str]]:
    """Write-time failures (sample index -> reason) and the source modes of the non-RGB samples."""
    failed: dict[int, str] = {}
    modes: dict[int, str] = {}
    if events.exists():
        for line in events.read_text().splitlines():
            kind, i, text = line.split("\t", 2)
            (failed if kind == "fail" else modes)[int(i)] = text
    recoded = Counter(m for i, m in modes.items() if i not in failed)
    return failed, recoded


# --------------------------------------------------------------------------- public API

def convert(src: Path | str, out: Path | str, opts: ConvertOptions | None = None, *,
            label_map: dict[str, int] | None = None, force: bool = False, log=print) -> ConvertResult:
    """Convert one ImageNet-layout tree into `out` (.beton) + labels/skipped/convert.json next to it.

    label_map: use this class->index map (e.g. the training set's, when converting val) instead of
    the classes found in src.
    """
    src, out = Path(src), Path(out)
    opts = opts or ConvertOptions()
    errs = opts.errors()
    if not src.exists():
        errs.append(f"SRC: {src} does not exist")
    elif not src.is_dir():
        errs.append(f"SRC: {src} is not a folder (expected SRC/<class>/<image>.JPEG)")
    if out.suffix != ".beton":
        errs.append(f"OUT: {out} must end in .beton")
    if errs:
        raise ConvertError("; ".join(errs))
    t0 = time.time()
    candidates, skipped, src_fp = _scan(src, label_map)
    if not candidates:
        raise ConvertError(f"SRC: {src} has no class folder with images (expected SRC/<class>/*.JPEG|*.jpg|*.png)")

    meta = {"src": str(src.resolve()), "source_fingerprint": src_fp, "options": opts.fingerprint(),
            "label_map": label_map}
    mp = meta_path(out)
    if out.exists() and mp.exists() and not force:
        old = json.loads(mp.read_text())
        same = {k: old.get(k) for k in meta} == meta
        if same:
            return ConvertResult(out, old["converted"], [tuple(s) for s in old["skipped"]], old["empty_classes"],
                                 old["num_classes"], old.get("recoded", {}), 0.0, up_to_date=True)
        why = [k for k in meta if old.get(k) != meta[k]]
        log(f"{out}: exists but {', '.join(why)} changed; converting again")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*out.parent.glob(out.name + ".partial-*"), *out.parent.glob(out.name + ".events-*")]:
        log(f"removing {stale.name} left by an interrupted conversion")
        stale.unlink()

    paths, max_pixels = _max_pixels([p for p, _ in candidates], opts, skipped)
    ok = set(paths)
    good = [(p, name) for p, name in candidates if p in ok]
    if not good:
        raise ConvertError(f"SRC: {src} has no readable image (all {len(candidates)} candidates failed, "
                           f"e.g. {skipped[-1][0]}: {skipped[-1][1]})")
    # labels as if every file converts; a class left without images by a failed decode is removed
    # from the map afterwards and the stored labels are renumbered with it
    names = sorted({name for _, name in good})
    first_map = label_map if label_map is not None else {n: i for i, n in enumerate(names)}

    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    events = out.with_name(f"{out.name}.events-{os.getpid()}")
    try:
        events.unlink(missing_ok=True)
        _write(tmp, [p for p, _ in good], [first_map[n] for _, n in good], opts, events, max_pixels)
        failed, recoded = _read_events(events)
        skipped.extend((good[i][0], reason) for i, reason in sorted(failed.items()))
        converted = [g for i, g in enumerate(good) if i not in failed]
        if not converted:
            raise ConvertError(f"SRC: {src} has no readable image (all {len(candidates)} candidates failed, "
                               f"e.g. {good[0][0]}: {failed[0]})")
        classes_with_images = sorted({name for _, name in converted})
        mapping = label_map if label_map is not None else {n: i for i, n in enumerate(classes_with_images)}
        if failed:
            from .beton_edit import drop_samples

            remap = np.array([mapping.get(n, -1) for n in sorted(first_map, key=first_map.get)], np.int64)
            drop = np.zeros(len(good), bool)
            drop[list(failed)] = True
            drop_samples(tmp, drop, label_field="f1", label_remap=None if label_map is not None else remap)
        good = converted
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        events.unlink(missing_ok=True)
    not_in_map = {n for n in class_folders(src) if label_map is not None and n not in label_map}
    empty = sorted(set(class_folders(src)) - set(classes_with_images) - not_in_map)

    write_label_map(out, mapping)
    rel = [(os.path.relpath(p, src), r) for p, r in skipped]
    sp = skipped_path(out)
    report = rel + [(f"{n}/", "empty class folder (no convertible image); not given a label") for n in empty]
    if report:
        sp.write_text("".join(f"{p}\t{r}\n" for p, r in report))
    else:
        sp.unlink(missing_ok=True)
    result = ConvertResult(out, len(good), rel, empty, len(mapping), dict(recoded), time.time() - t0)
    meta.update(converted=result.converted, skipped=rel, empty_classes=empty, num_classes=len(mapping),
                recoded=dict(recoded), seconds=result.seconds)
    tmpm = mp.with_name(mp.name + ".tmp")
    tmpm.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmpm, mp)
    return result


def is_split_pair(src: Path) -> bool:
    """SRC holding exactly train/ and val/ trees (converted together, val with train's labels)."""
    return src.is_dir() and set(class_folders(src)) == {"train", "val"}


def convert_any(src: Path | str, out: Path | str, opts: ConvertOptions | None = None, *,
                force: bool = False, log=print) -> list[ConvertResult]:
    """`python -m data convert`: one tree -> OUT.beton, or a train/val pair -> OUT/{train,val}.beton."""
    src, out = Path(src), Path(out)
    if not is_split_pair(src):
        return [convert(src, out, opts, force=force, log=log)]
    if out.suffix == ".beton":
        raise ConvertError(f"OUT: {src} holds train/ and val/, so OUT must be a folder (got {out})")
    train = convert(src / "train", out / "train.beton", opts, force=force, log=log)
    from .labels import read_label_map

    val = convert(src / "val", out / "val.beton", opts, label_map=read_label_map(out / "train.beton"),
                  force=force, log=log)
    return [train, val]
