"""Remove samples from a finished .beton in place (the write pass's way of skipping a file that
failed to decode: ffcv's DatasetWriter needs the sample count before it starts and writes every
index it was given).

A .beton is: header | field descriptors | metadata table (one record per sample, holding absolute
pointers into the data pages) | data pages | allocation table (sample id, pointer, size) at
header.alloc_table_ptr. Dropping samples therefore only rewrites the small tables: the metadata
records that are kept move up (the bytes freed before the first page are left unused), the
allocation entries of dropped samples go and the others are renumbered, the header gets the new
count, and the file is cut after the shorter allocation table. No image data is copied.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def drop_samples(path: Path | str, drop: np.ndarray, *, label_field: str | None = None,
                 label_remap: np.ndarray | None = None) -> int:
    """Remove the samples where `drop` is True; optionally map the kept samples' labels
    (`label_field` of the metadata, e.g. 'f1') through `label_remap[old] -> new`. Returns the count kept."""
    from .ffcv_api import ALLOC_TABLE_TYPE, FieldDescType, HeaderType, get_handlers, get_metadata_type

    path = str(path)
    drop = np.asarray(drop, dtype=bool)
    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    n, num_fields = int(header["num_samples"]), int(header["num_fields"])
    if len(drop) != n:
        raise ValueError(f"{path}: {n} samples but a drop mask of {len(drop)}")
    descriptors = np.fromfile(path, dtype=FieldDescType, count=num_fields, offset=HeaderType.itemsize)
    meta_type = get_metadata_type(get_handlers(descriptors))
    meta_at = HeaderType.itemsize + descriptors.nbytes
    metadata = np.fromfile(path, dtype=meta_type, count=n, offset=meta_at)
    table_at = int(header["alloc_table_ptr"])
    table = np.fromfile(path, dtype=ALLOC_TABLE_TYPE, offset=table_at)

    kept = metadata[~drop].copy()
    if label_remap is not None:
        kept[label_field] = np.asarray(label_remap)[kept[label_field]]
    new_id = np.cumsum(~drop) - 1  # old sample id -> new one (for the kept ones)
    ids = table["sample_id"].astype(np.int64)
    table = table[~drop[ids]].copy()
    table["sample_id"] = new_id[table["sample_id"].astype(np.int64)]
    header["num_samples"] = len(kept)

    with open(path, "r+b") as f:
        f.seek(meta_at)
        f.write(kept.tobytes())
        f.seek(table_at)
        f.write(table.tobytes())
        f.truncate(table_at + table.nbytes)
        f.seek(0)
        f.write(header.tobytes())
        f.flush()
        os.fsync(f.fileno())
    return len(kept)
