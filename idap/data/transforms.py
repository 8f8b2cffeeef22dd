"""Normalisation and resizing of images, and the lazy datasets that apply them per item."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from idap.data.registry import DatasetInfo

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Eval transform: resize the shorter side to size / CROP_RATIO, then centre-crop ``size``
# (224 -> 256 -> 224, the ImageNet convention; 299 -> 342 for Inception-v3).
CROP_RATIO = 0.875


class ResizedTensors(Dataset):
    """In-memory uint8 images, normalised and resized (and optionally augmented) per item.

    Args:
        x: uint8 images (N, H, W) or (N, H, W, C), values in [0, scale].
        y: labels (N,).
        scale: the value of a white pixel.
        info: the dataset's description (mean/std).
        size: output square side.
        augment: 4-px-padded random crop at the native resolution + horizontal flip, drawn
            from the global torch RNG (seeded by the stage).
    """

    def __init__(self, x, y, scale: float, info: DatasetInfo, size: int, augment: bool = False):
        self.x, self.y = x, y.to(torch.int64)
        self.scale, self.size, self.augment = scale, size, augment
        self.mean = torch.tensor(info.mean).view(-1, 1, 1)
        self.std = torch.tensor(info.std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.x[i].to(torch.float32).div_(self.scale)
        img = img.unsqueeze(0) if img.ndim == 2 else img.permute(2, 0, 1)
        img = (img - self.mean) / self.std
        if self.augment:
            h, w = img.shape[1:]
            padded = F.pad(img, (4, 4, 4, 4))
            top, left = (int(v) for v in torch.randint(0, 9, (2,)))
            img = padded[:, top : top + h, left : left + w]
            if torch.rand(()) < 0.5:
                img = img.flip(-1)
        if img.shape[1:] != (self.size, self.size):
            img = F.interpolate(
                img.unsqueeze(0), size=(self.size, self.size), mode="bilinear", antialias=True
            )[0]
        return img.contiguous(), self.y[i]


class ImageFiles(Dataset):
    """Images decoded from disk on access: ``(transform(PIL image), label)``.

    Args:
        root: the dataset directory the paths are relative to.
        paths: relative image paths.
        labels: int64 labels, one per path.
        transform: PIL image -> float tensor.
        mode: PIL mode the image is converted to ("RGB" or "L").
    """

    def __init__(
        self,
        root: Path,
        paths: Sequence[str],
        labels: torch.Tensor,
        transform: Callable,
        mode: str = "RGB",
    ):
        self.root, self.paths, self.labels = Path(root), list(paths), labels.to(torch.int64)
        self.transform, self.mode = transform, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        with Image.open(self.root / self.paths[i]) as im:
            img = im.convert(self.mode)
        return self.transform(img), self.labels[i]


def image_transform(size: int, info: DatasetInfo, *, train: bool) -> Callable:
    """torchvision transform for image-folder datasets (PIL in, normalised tensor out).

    Eval: shorter side to ``round(size / 0.875)``, centre crop ``size``. Train (augment):
    random resized crop ``size`` (scale 0.25-1) + horizontal flip.
    """
    from torchvision import transforms as T

    if train:
        geometry = [T.RandomResizedCrop(size, scale=(0.25, 1.0)), T.RandomHorizontalFlip()]
    else:
        geometry = [T.Resize(round(size / CROP_RATIO)), T.CenterCrop(size)]
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(info.mean, info.std)])


def to_float(x: torch.Tensor, scale: float, info: DatasetInfo) -> torch.Tensor:
    x = x.to(torch.float32).div_(scale)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()  # to NCHW
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)
