"""Datasets: a registry of sources, offline-friendly preparation, seeded splits and loaders.

Importing this package registers every source. ``prepare_dataset`` is the download stage;
``load_splits`` gives seeded, stratified train/val/test splits; ``load_data`` wraps them in
the loaders every stage uses.
"""

from idap.data.loaders import Data, check_model_fits, load_data, make_loader
from idap.data.registry import (
    DATASETS,
    MANIFEST,
    DatasetInfo,
    DatasetUnavailable,
    Splits,
    dataset_info,
)
from idap.data.sources import arrays, folders, torchvision_sets  # noqa: F401  (registers)
from idap.data.splits import load_splits, prepare_dataset, stratified_split
from idap.data.transforms import ImageFiles, ResizedTensors, image_transform

__all__ = [
    "DATASETS",
    "MANIFEST",
    "Data",
    "DatasetInfo",
    "DatasetUnavailable",
    "ImageFiles",
    "ResizedTensors",
    "Splits",
    "check_model_fits",
    "dataset_info",
    "image_transform",
    "load_data",
    "load_splits",
    "make_loader",
    "prepare_dataset",
    "stratified_split",
]
