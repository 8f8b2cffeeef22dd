"""Dataset registry: offline-friendly preparation ("download" stage) and seeded, stratified splits.

Two kinds of entries:

* small datasets (digits, Fashion-MNIST, CIFAR-10/100, FER2013) are held in memory as uint8
  tensors. At their native resolution a split is a normalised ``TensorDataset`` (no per-item
  decoding, no worker processes: cheap and bit-for-bit reproducible); at another resolution
  (``load_splits(image_size=...)``, e.g. 224 px for an ImageNet-pretrained model) each item is
  normalised and resized on access, so 60 000 images never become 12 GB of float tensors.
* image-folder datasets (ImageNet, Stanford Cars, Flowers-102, iNaturalist, Food-101,
  Oxford-IIIT Pet) stay on disk: the download stage writes one ``index-<split>.tsv`` per
  split (relative path, label) and a split is a lazy :class:`ImageFiles` dataset that decodes
  and transforms each JPEG on access.

Every split yields ``(float32 CHW tensor, int64 label)`` pairs, whatever its kind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from idap.core.io import read_json, sha256_file, write_json
from idap.data.registry import (
    MANIFEST,
    DatasetUnavailable,
    RawFiles,
    Splits,
    get_dataset,
)
from idap.data.transforms import ImageFiles, ResizedTensors, image_transform, to_float


def stratified_split(labels, n_holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, holdout) with class proportions preserved.

    Each class gets ``n_holdout * count / N`` holdout samples rounded down; the leftover slots go
    to the classes with the largest remainders, so every class's holdout count is within one
    sample of its exact proportional share.

    Args:
        labels: 1-D integer labels (array-like or tensor).
        n_holdout: holdout size, ``0 <= n_holdout <= len(labels)``.
        seed: seeds the numpy Generator that picks samples within each class.

    Returns:
        Sorted int64 index arrays ``(keep_idx, holdout_idx)``, disjoint and covering all indices.
    """
    y = np.asarray(labels).reshape(-1)
    n = len(y)
    if not 0 <= n_holdout <= n:
        raise ValueError(f"holdout size {n_holdout} outside [0, {n}]")
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * (n_holdout / n) if n else counts.astype(float)
    quota = np.floor(exact).astype(np.int64)
    # Stable sort: equal remainders are broken by class order, never by chance.
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: n_holdout - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    picked = [
        rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota, strict=True)
    ]
    holdout = np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
    mask = np.ones(n, bool)
    mask[holdout] = False
    return np.flatnonzero(mask).astype(np.int64), holdout.astype(np.int64)


def prepare_dataset(name: str, root: str | Path) -> Path:
    """The "download" stage: make dataset ``name`` available under ``root/<name>/``.

    Writes ``root/<name>/manifest.json`` last (atomically), so its presence means the data is
    complete. It records the name, class count, raw train/test (and official val) sizes, the
    source used ("debian", "torchvision-download", "sklearn" or "existing") and the
    sha256 of the raw files (for image-folder datasets: of the annotation and index files).

    Args:
        name: registered dataset name.
        root: datasets root directory.

    Returns:
        The manifest's path.

    Raises:
        DatasetUnavailable: the data is absent and cannot be fetched (one-line message).
        UnknownNameError: ``name`` is not registered.
    """
    spec = get_dataset(name)
    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    source, files = spec.prepare(d)
    raw = spec.load(d)  # reading back proves the files parse before we declare them ready
    write_json(
        d / MANIFEST,
        {
            "name": name,
            "num_classes": spec.info.num_classes,
            "sizes": split_sizes(raw),
            "source": source,
            "sha256": {p.relative_to(d).as_posix(): sha256_file(p) for p in files},
        },
    )
    return d / MANIFEST


def load_splits(
    name: str,
    root: str | Path,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    val_max: int = 5000,
    train_subset: int | None = None,
    test_subset: int | None = None,
    image_size: int | None = None,
    augment: bool = False,
) -> Splits:
    """Load a prepared dataset as normalised train/val/test splits.

    val is a seeded, class-stratified hold-out of ``min(round(val_fraction * N), val_max)``
    samples carved from the official train split; train is the rest (or a seeded stratified
    subset of it of size ``train_subset``); test is the official test split (or a seeded
    stratified subset of size ``test_subset``). Where the dataset has an official validation
    split (Flowers-102, FER2013's PublicTest) that split is val and ``val_fraction``/``val_max``
    do not apply. Subset sizes larger than what is available mean "all of it". Same arguments
    give identical splits.

    Args:
        name: registered dataset name.
        root: datasets root passed to :func:`prepare_dataset`.
        seed: seeds every split and subset.
        val_fraction: share of the train split held out for validation.
        val_max: cap on the validation size.
        train_subset: optional training-set size.
        test_subset: optional test-set size.
        image_size: square side the images are brought to (normally the model's
            ``ModelSpec.input_size``); None: the dataset's own ``info.image_size``. In-memory
            datasets are resized (bilinear); image-folder datasets are resized to
            ``image_size / 0.875`` on the shorter side and centre-cropped.
        augment: random augmentation of the train split only (image folders: random resized
            crop + horizontal flip; in-memory: 4-px-padded random crop + horizontal flip,
            before the resize). val and test are never augmented.

    Raises:
        DatasetUnavailable: the dataset has not been prepared (run the download stage).
    """
    spec = get_dataset(name)
    d = Path(root) / name
    if not (d / MANIFEST).is_file():
        raise DatasetUnavailable(
            f"dataset {name!r} is not prepared: {d / MANIFEST} missing; run the download stage "
            f"(idap download / prepare_dataset) first"
        )
    if read_json(d / MANIFEST).get("name") != name:
        raise DatasetUnavailable(f"{d / MANIFEST} is not a manifest for {name!r}; rerun download")
    raw = spec.load(d)
    if raw.val_y is None:
        train_idx, val_idx = split_indices(raw.train_y, seed, val_fraction, val_max, train_subset)
    else:  # official validation split
        train_idx, val_idx = np.arange(len(raw.train_y)), np.arange(len(raw.val_y))
        if train_subset is not None and train_subset < len(train_idx):
            train_idx = stratified_split(raw.train_y, train_subset, seed + 1)[1]
    test_idx = np.arange(len(raw.test_y))
    if test_subset is not None and test_subset < len(test_idx):
        test_idx = stratified_split(raw.test_y, test_subset, seed + 2)[1]
    info = spec.info
    size = int(image_size or info.image_size)
    if isinstance(raw, RawFiles):
        val_paths = raw.train_paths if raw.val_y is None else raw.val_paths
        val_y = raw.train_y if raw.val_y is None else raw.val_y

        def files(paths: list[str], y: torch.Tensor, idx: np.ndarray, train: bool):
            tf = image_transform(size, info, train=train and augment)
            return ImageFiles(raw.root, [paths[i] for i in idx], y[idx], tf, raw.mode)

        return Splits(
            train=files(raw.train_paths, raw.train_y, train_idx, True),
            val=files(val_paths, val_y, val_idx, False),
            test=files(raw.test_paths, raw.test_y, test_idx, False),
            info=info,
        )

    lazy = size != info.image_size or augment
    val_x = raw.train_x if raw.val_x is None else raw.val_x
    val_y = raw.train_y if raw.val_y is None else raw.val_y

    def part(x: torch.Tensor, y: torch.Tensor, idx: np.ndarray, train: bool) -> Dataset:
        i = torch.from_numpy(idx)
        if lazy:
            return ResizedTensors(x[i], y[i], raw.scale, info, size, augment=train and augment)
        return TensorDataset(to_float(x[i], raw.scale, info), y[i].to(torch.int64))

    return Splits(
        train=part(raw.train_x, raw.train_y, train_idx, True),
        val=part(val_x, val_y, val_idx, False),
        test=part(raw.test_x, raw.test_y, test_idx, False),
        info=info,
    )


def split_sizes(raw) -> dict[str, int]:
    sizes = {"train": len(raw.train_y), "test": len(raw.test_y)}
    if raw.val_y is not None:
        sizes["val"] = len(raw.val_y)
    return sizes


def split_indices(
    labels, seed: int, val_fraction: float, val_max: int, train_subset: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) into the official train split; disjoint by construction."""
    n = len(labels)
    y = np.asarray(labels)
    n_val = min(round(val_fraction * n), val_max, n)
    rest, val = stratified_split(y, n_val, seed)
    if train_subset is not None and train_subset < len(rest):
        # Separate seed stream so changing the subset size never moves the validation set.
        rest = rest[stratified_split(y[rest], train_subset, seed + 1)[1]]
    return rest, val
