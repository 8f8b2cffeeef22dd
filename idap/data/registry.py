"""Dataset registry and the types every dataset entry shares.

A registered entry is a class with an ``info`` (:class:`DatasetInfo`), ``prepare(dir) ->
(source, files)`` (fetch the data into ``dir``) and ``load(dir)`` returning
:class:`RawTensors` (in-memory sets) or :class:`RawFiles` (image folders).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from idap.core.registry import Registry

DATASETS = Registry("dataset")

MANIFEST = "manifest.json"


class DatasetUnavailable(RuntimeError):
    """The data is not on disk and cannot be fetched; the message says what to place where."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset, available without touching the data."""

    name: str
    num_classes: int
    in_chans: int
    image_size: int  # square side after transforms
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class Splits:
    """Each split yields normalised float32 ``(C, H, W)`` images with int64 labels.

    A split is a ``TensorDataset`` for an in-memory dataset at its native resolution, else a
    lazy dataset (:class:`ResizedTensors`, :class:`ImageFiles`) that transforms on access.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    info: DatasetInfo


@dataclass
class RawTensors:
    """Unnormalised official splits: images (N, H, W) or (N, H, W, C), values in [0, scale].

    ``val_x``/``val_y``: an official validation split, used as ``val`` where the dataset has
    one (FER2013's PublicTest); otherwise val is carved from train.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    scale: float
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None


@dataclass
class RawFiles:
    """Official splits of an on-disk image dataset: paths relative to the dataset dir."""

    root: Path
    train_paths: list[str]
    train_y: torch.Tensor
    test_paths: list[str]
    test_y: torch.Tensor
    val_paths: list[str] | None = None
    val_y: torch.Tensor | None = None
    mode: str = "RGB"


def get_dataset(name: str):
    return DATASETS.get(name)()


def dataset_info(name: str) -> DatasetInfo:
    """Return the static description of dataset ``name``.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the valid names).
    """
    return DATASETS.get(name).info


def check_classes(title: str, labels, num_classes: int, where) -> None:
    found = np.unique(np.asarray(labels))
    if len(found) != num_classes or found.min() != 0 or found.max() != num_classes - 1:
        raise DatasetUnavailable(
            f"{title} under {where} has {len(found)} classes in its train split, expected "
            f"{num_classes} (labels 0..{num_classes - 1}); the copy is incomplete: replace it "
            f"and rerun the download stage"
        )
