"""Class folders -> label indices, and the JSON label map stored next to every .beton.

The order is torchvision ImageFolder's (classes sorted by folder name, files by sorted os.walk), so
sample i of a .beton is sample i of ImageFolder over the same (clean) tree.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def label_map_path(beton: Path) -> Path:
    """train.beton -> train.labels.json"""
    beton = Path(beton)
    return beton.with_name(beton.stem + ".labels.json")


def class_folders(root: Path) -> list[str]:
    """Sorted names of the immediate sub-folders of an ImageNet-layout tree."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def walk_class(root: Path, name: str) -> Iterator[Path]:
    """Every regular file under one class folder, in ImageFolder order (nested folders included)."""
    for dirpath, dirnames, fnames in sorted(os.walk(Path(root) / name, followlinks=True)):
        dirnames.sort()
        for fname in sorted(fnames):
            if not fname.startswith("."):
                yield Path(dirpath) / fname


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def is_image_file(path: str | Path) -> bool:
    """An image file name and not empty (cheap; decodability is checked by the converter)."""
    return is_image_name(Path(path)) and os.path.getsize(path) > 0


def folder_label_map(root: Path) -> dict[str, int]:
    """Label map of a JPEG tree: class folders holding at least one non-empty image file, sorted."""
    names = [n for n in class_folders(root) if any(is_image_file(p) for p in walk_class(root, n))]
    return {n: i for i, n in enumerate(names)}


def write_label_map(beton: Path, mapping: dict[str, int]) -> Path:
    path = label_map_path(beton)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(mapping, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_label_map(beton_or_dir: Path | str) -> dict[str, int]:
    """The class->index map of a .beton (its .labels.json) or of an ImageNet-layout folder."""
    p = Path(beton_or_dir)
    if p.is_dir():
        mapping = folder_label_map(p)
        if not mapping:
            raise ValueError(f"{p} has no class folder with images (*.jpg, *.jpeg, *.png)")
        return mapping
    path = label_map_path(p)
    if not path.exists():
        raise ValueError(f"{path} (the label map of {p.name}) is missing; re-run python -m data convert")
    try:
        mapping = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-run python -m data convert") from e
    if not isinstance(mapping, dict) or sorted(mapping.values()) != list(range(len(mapping))):
        raise ValueError(f"{path} must map class names to 0..N-1; re-run python -m data convert")
    return {str(k): int(v) for k, v in mapping.items()}
