"""Dataset registry: offline-friendly preparation ("download" stage) and seeded, stratified splits.

Every dataset is held in memory as tensors: the benchmark's datasets are small, and in-memory
``TensorDataset`` batches avoid per-item PIL decoding and worker processes, which keeps data
loading cheap and bit-for-bit reproducible.
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .io import atomic_path, read_json, sha256_file, write_json
from .registry import Registry

DATASETS = Registry("dataset")

MANIFEST = "manifest.json"
# Where Debian's ``dataset-fashion-mnist`` package installs the idx files; tests point it elsewhere.
FASHION_MNIST_ENV = "IDAP_FASHION_MNIST_DIR"
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


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
    """Normalised float32 images ``(N, C, H, W)`` with int64 labels for each split."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    info: DatasetInfo


@dataclass
class _Raw:
    """Unnormalised official splits: images (N, H, W) or (N, H, W, C), values in [0, scale]."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    scale: float


# Registered entries are classes with an ``info`` attribute, ``prepare(dir) -> (source, raw
# files)`` (fetch the data into ``dir``) and ``load(dir) -> _Raw`` (read it back).
def _spec(name: str):
    return DATASETS.get(name)()


def dataset_info(name: str) -> DatasetInfo:
    """Return the static description of dataset ``name``.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the valid names).
    """
    return DATASETS.get(name).info


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
    complete. It records the name, class count, raw train/test sizes, the source used
    ("debian", "torchvision-download", "sklearn" or "existing") and sha256 of the raw files.

    Args:
        name: registered dataset name.
        root: datasets root directory.

    Returns:
        The manifest's path.

    Raises:
        DatasetUnavailable: the data is absent and cannot be fetched (one-line message).
        UnknownNameError: ``name`` is not registered.
    """
    spec = _spec(name)
    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    source, files = spec.prepare(d)
    raw = spec.load(d)  # reading back proves the files parse before we declare them ready
    write_json(
        d / MANIFEST,
        {
            "name": name,
            "num_classes": spec.info.num_classes,
            "sizes": {"train": len(raw.train_y), "test": len(raw.test_y)},
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
) -> Splits:
    """Load a prepared dataset as normalised train/val/test tensors.

    val is a seeded, class-stratified hold-out of ``min(round(val_fraction * N), val_max)``
    samples carved from the official train split; train is the rest (or a seeded stratified
    subset of it of size ``train_subset``); test is the official test split (or a seeded
    stratified subset of size ``test_subset``). Subset sizes larger than what is available
    mean "all of it". Same arguments give identical tensors.

    Args:
        name: registered dataset name.
        root: datasets root passed to :func:`prepare_dataset`.
        seed: seeds every split and subset.
        val_fraction: share of the train split held out for validation.
        val_max: cap on the validation size.
        train_subset: optional training-set size.
        test_subset: optional test-set size.

    Raises:
        DatasetUnavailable: the dataset has not been prepared (run the download stage).
    """
    spec = _spec(name)
    d = Path(root) / name
    if not (d / MANIFEST).is_file():
        raise DatasetUnavailable(
            f"dataset {name!r} is not prepared: {d / MANIFEST} missing; run the download stage "
            f"(idap download / prepare_dataset) first"
        )
    if read_json(d / MANIFEST).get("name") != name:
        raise DatasetUnavailable(f"{d / MANIFEST} is not a manifest for {name!r}; rerun download")
    raw = spec.load(d)
    train_idx, val_idx = _split_indices(raw.train_y, seed, val_fraction, val_max, train_subset)
    test_idx = np.arange(len(raw.test_y))
    if test_subset is not None and test_subset < len(test_idx):
        test_idx = stratified_split(raw.test_y, test_subset, seed + 2)[1]

    def part(x: torch.Tensor, y: torch.Tensor, idx: np.ndarray) -> TensorDataset:
        i = torch.from_numpy(idx)
        return TensorDataset(_to_float(x[i], raw.scale, spec.info), y[i].to(torch.int64))

    return Splits(
        train=part(raw.train_x, raw.train_y, train_idx),
        val=part(raw.train_x, raw.train_y, val_idx),
        test=part(raw.test_x, raw.test_y, test_idx),
        info=spec.info,
    )


def make_loader(
    ds, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False
) -> DataLoader:
    """A single-process DataLoader over in-memory tensors.

    Args:
        ds: the dataset (normally a split from :func:`load_splits`).
        batch_size: samples per batch.
        shuffle: reshuffle every epoch, driven by a private generator seeded with ``seed`` so
            the sequence of epochs is reproducible and independent of the global RNG.
        seed: shuffle seed.
        drop_last: drop the last incomplete batch.
    """
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    # Workers would only add fork/IPC cost: every item is already a tensor in memory.
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=0,
        drop_last=drop_last,
        generator=gen,
    )


def _split_indices(
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


def _to_float(x: torch.Tensor, scale: float, info: DatasetInfo) -> torch.Tensor:
    x = x.to(torch.float32).div_(scale)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()  # to NCHW
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


def _gunzip(src: Path, dst: Path) -> None:
    with gzip.open(src, "rb") as fin, atomic_path(dst) as tmp, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


@DATASETS.register("fashion_mnist")
class _FashionMNIST:
    info = DatasetInfo("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,))

    def prepare(self, d: Path) -> tuple[str, list[Path]]:
        raw = d / "FashionMNIST" / "raw"
        files = [raw / f for f in _FASHION_FILES]
        if all(f.is_file() or f.with_name(f.name + ".gz").is_file() for f in files):
            for f in files:
                if not f.is_file():
                    _gunzip(f.with_name(f.name + ".gz"), f)
            return "existing", files
        deb = Path(os.environ.get(FASHION_MNIST_ENV, FASHION_MNIST_DEBIAN_DIR))
        if all((deb / f"{f.name}.gz").is_file() for f in files):
            for f in files:
                _gunzip(deb / f"{f.name}.gz", f)
            return "debian", files
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(str(d), train=True, download=True)
        except Exception as e:  # any failure offline looks different; the fix is the same
            raise DatasetUnavailable(
                f"Fashion-MNIST not found and download failed (offline? {type(e).__name__}): "
                f"install Debian's dataset-fashion-mnist (or set {FASHION_MNIST_ENV} to a dir "
                f"with the four idx .gz files) or place the four idx .gz files in {raw}/"
            ) from e
        return "torchvision-download", files

    def load(self, d: Path) -> _Raw:
        from torchvision.datasets import FashionMNIST

        try:
            tr = FashionMNIST(str(d), train=True, download=False)
            te = FashionMNIST(str(d), train=False, download=False)
        except RuntimeError as e:
            raise DatasetUnavailable(
                f"Fashion-MNIST idx files missing under {d / 'FashionMNIST' / 'raw'}; "
                f"rerun the download stage"
            ) from e
        return _Raw(tr.data, tr.targets, te.data, te.targets, 255.0)


@DATASETS.register("digits")
class _Digits:
    # mean/std of load_digits() pixels scaled to [0, 1]
    info = DatasetInfo("digits", 10, 1, 8, (0.3053,), (0.3760,))
    TEST_FRACTION = 0.2
    SPLIT_SEED = 0  # fixed: the carved test split is part of the dataset, not of a run

    def prepare(self, d: Path) -> tuple[str, list[Path]]:
        from safetensors.torch import save_file
        from sklearn.datasets import load_digits

        bunch = load_digits()  # ships inside scikit-learn: never needs the network
        x = torch.from_numpy(bunch.images.astype(np.uint8))  # 16 grey levels: 0..16
        y = torch.from_numpy(bunch.target.astype(np.int64))
        n_test = round(self.TEST_FRACTION * len(y))
        tr, te = (torch.from_numpy(i) for i in stratified_split(y, n_test, self.SPLIT_SEED))
        tensors = {"train_x": x[tr], "train_y": y[tr], "test_x": x[te], "test_y": y[te]}
        path = d / "data.safetensors"
        with atomic_path(path) as tmp:
            # One metadata key only: safetensors orders several keys at random, and a
            # byte-identical file keeps the manifest's sha256 stable across reruns.
            save_file(
                {k: v.contiguous() for k, v in tensors.items()},
                str(tmp),
                metadata={"source": "sklearn.datasets.load_digits, values 0..16"},
            )
        return "sklearn", [path]

    def load(self, d: Path) -> _Raw:
        from safetensors.torch import load_file

        path = d / "data.safetensors"
        if not path.is_file():
            raise DatasetUnavailable(f"{path} missing; rerun the download stage")
        t = load_file(str(path))
        return _Raw(t["train_x"], t["train_y"], t["test_x"], t["test_y"], 16.0)


@DATASETS.register("cifar10")
class _CIFAR10:
    info = DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    FILES = (
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
        "batches.meta",
    )

    def _files(self, d: Path) -> list[Path]:
        return [d / "cifar-10-batches-py" / f for f in self.FILES]

    def prepare(self, d: Path) -> tuple[str, list[Path]]:
        from torchvision.datasets import CIFAR10

        try:  # torchvision checks every batch's md5, so "existing" means intact
            CIFAR10(str(d), train=True, download=False)
            return "existing", self._files(d)
        except RuntimeError:
            pass
        try:
            CIFAR10(str(d), train=True, download=True)
        except Exception as e:  # offline failures vary (URLError, timeouts, md5 mismatch)
            raise DatasetUnavailable(
                f"CIFAR-10 not found and download failed (offline? {type(e).__name__}): "
                f"place the extracted cifar-10-batches-py/ directory under {d}/"
            ) from e
        return "torchvision-download", self._files(d)

    def load(self, d: Path) -> _Raw:
        from torchvision.datasets import CIFAR10

        try:
            tr = CIFAR10(str(d), train=True, download=False)
            te = CIFAR10(str(d), train=False, download=False)
        except RuntimeError as e:
            raise DatasetUnavailable(
                f"CIFAR-10 batches missing or corrupt under {d / 'cifar-10-batches-py'}; "
                f"rerun the download stage"
            ) from e

        x, y = torch.from_numpy, torch.tensor
        return _Raw(x(tr.data), y(tr.targets), x(te.data), y(te.targets), 255.0)
