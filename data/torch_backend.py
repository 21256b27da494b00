"""Plain PyTorch reference source (`data.backend: torch`): torchvision ImageFolder files, a
torch DataLoader, and the same crop/flip geometry and keys as the FFCV decoder (data.rng), so both backends
produce the same crops of the same samples in the same order."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets import ImageFolder

from .labels import folder_label_map, is_image_file
from .resample import bicubic_resize
from .rng import batch_key, bicubic_draw, center_crop_params, flip_draw, rrc_params, sample_key


class _Folder(ImageFolder):
    """ImageFolder with the converter's class list (folders without images get no label)."""

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        mapping = folder_label_map(Path(directory))
        return list(mapping), mapping


class _CropFolder(Dataset):
    """ImageFolder samples; item (index, key): RandomResizedCrop from key (train) or center crop (val),
    resized with OpenCV INTER_AREA like ffcv (or bicubic where rng.bicubic_draw selects it, with the
    ffcv decoder's function); returns (uint8 HWC array, label)."""

    def __init__(self, root: Path, train: bool, img_size: int, scale, ratio, crop_pct: float, hflip: float = 0.0,
                 p_bicubic: float = 0.0):
        self.folder = _Folder(str(root), is_valid_file=is_image_file)
        self.hflip, self.p_bicubic = hflip, p_bicubic
        self.train, self.size, self.scale, self.ratio, self.crop_pct = train, img_size, scale, ratio, crop_pct

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, item: tuple[int, int]):
        index, key = item
        path, label = self.folder.samples[index]
        img = np.asarray(self.folder.loader(path), dtype=np.uint8)
        h, w = img.shape[:2]
        if self.train:
            i, j, ch, cw = rrc_params(np.uint64(key), h, w, self.scale[0], self.scale[1], self.ratio[0], self.ratio[1])
        else:
            i, j, ch, cw = center_crop_params(h, w, self.crop_pct)
        if bicubic_draw(np.uint64(key), self.p_bicubic):  # val: p 0 or 1 (data.val_interpolation)
            crop = np.empty((self.size, self.size, 3), np.uint8)
            bicubic_resize(img, i, j, ch, cw, crop)
        else:
            crop = cv2.resize(img[i:i + ch, j:j + cw], (self.size, self.size), interpolation=cv2.INTER_AREA)
        if self.train and flip_draw(np.uint64(key), self.hflip):
            crop = np.ascontiguousarray(crop[:, ::-1])
        return torch.from_numpy(crop), label


class _KeyedBatches(Sampler):
    """Batches of (index, crop key) for one epoch, keys as the ffcv decoder derives them."""

    def __init__(self, order: np.ndarray, batch_size: int, drop_last: bool, salt: int, start_batch: int):
        self.order, self.bs, self.drop_last, self.salt, self.start = order, batch_size, drop_last, salt, start_batch

    def __len__(self) -> int:
        n = len(self.order) // self.bs if self.drop_last else -(-len(self.order) // self.bs)
        return max(0, n - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        salt = np.uint64(self.salt)
        for b in range(self.start, self.start + len(self)):
            idx = self.order[b * self.bs:(b + 1) * self.bs]
            bkey = np.uint64(batch_key(salt, idx.astype(np.uint64)))
            yield [(int(i), int(sample_key(bkey, p))) for p, i in enumerate(idx)]


class TorchSource:
    """Batches of (uint8 NHWC images, int64 labels) from an ImageNet-layout folder, for one rank."""

    def __init__(self, root: Path, *, train: bool, make_order: Callable[[int], Callable[[int], np.ndarray]],
                 batch_size: int,
                 img_size: int, num_workers: int, device: torch.device, salt: int = 0,
                 scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), crop_pct: float = 0.9, hflip: float = 0.0,
                 p_bicubic: float = 0.0):
        self.dataset = _CropFolder(root, train, img_size, scale, ratio, crop_pct, hflip, p_bicubic)
        self.order_fn = make_order(len(self.dataset))
        self.batch_size, self.drop_last = batch_size, train
        self.num_workers, self.device, self.salt = num_workers, device, salt
        self.num_samples = len(self.dataset)

    def epoch_batches(self, epoch: int) -> int:
        n = len(self.order_fn(epoch))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def iterate(self, epoch: int, start_batch: int):
        sampler = _KeyedBatches(self.order_fn(epoch), self.batch_size, self.drop_last, self.salt, start_batch)
        dl = DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                        pin_memory=self.device.type == "cuda", persistent_workers=False)
        for images, labels in dl:
            yield images, labels.to(torch.int64)
