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

import csv
import gzip
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

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


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Eval transform: resize the shorter side to size / CROP_RATIO, then centre-crop ``size``
# (224 -> 256 -> 224, the ImageNet convention; 299 -> 342 for Inception-v3).
CROP_RATIO = 0.875


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
class _Raw:
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
class _Files:
    """Official splits of an on-disk image dataset: paths relative to the dataset dir."""

    root: Path
    train_paths: list[str]
    train_y: torch.Tensor
    test_paths: list[str]
    test_y: torch.Tensor
    val_paths: list[str] | None = None
    val_y: torch.Tensor | None = None
    mode: str = "RGB"


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
            "sizes": _sizes(raw),
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
    if raw.val_y is None:
        train_idx, val_idx = _split_indices(raw.train_y, seed, val_fraction, val_max, train_subset)
    else:  # official validation split
        train_idx, val_idx = np.arange(len(raw.train_y)), np.arange(len(raw.val_y))
        if train_subset is not None and train_subset < len(train_idx):
            train_idx = stratified_split(raw.train_y, train_subset, seed + 1)[1]
    test_idx = np.arange(len(raw.test_y))
    if test_subset is not None and test_subset < len(test_idx):
        test_idx = stratified_split(raw.test_y, test_subset, seed + 2)[1]
    info = spec.info
    size = int(image_size or info.image_size)
    if isinstance(raw, _Files):
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
        return TensorDataset(_to_float(x[i], raw.scale, info), y[i].to(torch.int64))

    return Splits(
        train=part(raw.train_x, raw.train_y, train_idx, True),
        val=part(val_x, val_y, val_idx, False),
        test=part(raw.test_x, raw.test_y, test_idx, False),
        info=info,
    )


def make_loader(
    ds,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int | None = None,
) -> DataLoader:
    """A DataLoader over a split; single-process for in-memory data.

    Args:
        ds: the dataset (normally a split from :func:`load_splits`).
        batch_size: samples per batch.
        shuffle: reshuffle every epoch, driven by a private generator seeded with ``seed`` so
            the sequence of epochs is reproducible and independent of the global RNG.
        seed: shuffle seed.
        drop_last: drop the last incomplete batch.
        num_workers: worker processes; None picks 0 for in-memory data (workers would only
            add fork/IPC cost) and up to 8 for :class:`ImageFiles` (JPEG decoding dominates).
    """
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    if num_workers is None:
        num_workers = min(8, max(1, (os.cpu_count() or 2) - 1)) if isinstance(ds, ImageFiles) else 0
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=gen,
        persistent_workers=num_workers > 0,
    )


# -- lazy splits ------------------------------------------------------------------------------
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


def _sizes(raw) -> dict[str, int]:
    sizes = {"train": len(raw.train_y), "test": len(raw.test_y)}
    if raw.val_y is not None:
        sizes["val"] = len(raw.val_y)
    return sizes


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


class _TorchvisionCIFAR:
    """CIFAR-10/100 through torchvision, which checks every file's md5 on opening, so an
    "existing" copy is an intact one. Subclasses name the torchvision class and the layout."""

    tv_class = ""  # torchvision.datasets attribute, looked up at call time
    label = ""  # name in messages
    folder = ""  # the extracted directory under the dataset root
    files: tuple[str, ...] = ()
    what = ""  # how the files are called in the "corrupt" message
    placement = ""  # what to place under the root when offline

    def _dataset(self, d: Path, train: bool, download: bool):
        import torchvision.datasets

        return getattr(torchvision.datasets, self.tv_class)(str(d), train=train, download=download)

    def _files(self, d: Path) -> list[Path]:
        return [d / self.folder / f for f in self.files]

    def prepare(self, d: Path) -> tuple[str, list[Path]]:
        try:
            self._dataset(d, train=True, download=False)
            return "existing", self._files(d)
        except RuntimeError:
            pass
        try:
            self._dataset(d, train=True, download=True)
        except Exception as e:  # offline failures vary (URLError, timeouts, md5 mismatch)
            raise DatasetUnavailable(
                f"{self.label} not found and download failed (offline? {type(e).__name__}): "
                f"place the extracted {self.placement} under {d}/"
            ) from e
        return "torchvision-download", self._files(d)

    def load(self, d: Path) -> _Raw:
        try:
            tr = self._dataset(d, train=True, download=False)
            te = self._dataset(d, train=False, download=False)
        except RuntimeError as e:
            raise DatasetUnavailable(
                f"{self.label} {self.what} missing or corrupt under {d / self.folder}; "
                f"rerun the download stage"
            ) from e
        x, y = torch.from_numpy, torch.tensor
        return _Raw(x(tr.data), y(tr.targets), x(te.data), y(te.targets), 255.0)


@DATASETS.register("cifar10")
class _CIFAR10(_TorchvisionCIFAR):
    info = DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    tv_class, label, folder, what = "CIFAR10", "CIFAR-10", "cifar-10-batches-py", "batches"
    files = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
    placement = "cifar-10-batches-py/ directory"


# ------------------------------------------------------------------------------------------
# The paper grid's other datasets (docs/paper_grid.md).
# ------------------------------------------------------------------------------------------
@DATASETS.register("cifar100")
class _CIFAR100(_TorchvisionCIFAR):
    info = DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    tv_class, label, folder, what = "CIFAR100", "CIFAR-100", "cifar-100-python", "files"
    files = ("train", "test", "meta")
    placement = "cifar-100-python/ directory (train, test, meta)"


@DATASETS.register("fer2013")
class _FER2013:
    """FER2013 (Kaggle, login required): 48x48 grey faces, 7 expressions.

    Splits follow the csv's ``Usage`` column: Training -> train, PublicTest -> val (the
    official validation split), PrivateTest -> test. The download stage parses the csv once
    into ``data.safetensors``.
    """

    # Nominal grey-level statistics (not recomputed: no copy of the data on this machine).
    info = DatasetInfo("fer2013", 7, 1, 48, (0.5,), (0.25,))
    CSV_FILES = ("fer2013.csv", "icml_face_data.csv")  # the two releases that label the tests
    USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}

    def prepare(self, d: Path) -> tuple[str, list[Path]]:
        from safetensors.torch import save_file

        folder = d / "fer2013"
        src = next((folder / f for f in self.CSV_FILES if (folder / f).is_file()), None)
        if src is None:
            has_kaggle = (folder / "train.csv").is_file()
            raise DatasetUnavailable(
                "FER2013 needs a manual download (Kaggle login): place fer2013.csv (columns "
                f"emotion,pixels,Usage; or icml_face_data.csv) in {folder}/ and rerun the "
                "download stage"
                + (
                    "; train.csv/test.csv are not enough (test.csv has no labels)"
                    if has_kaggle
                    else ""
                )
            )
        parts: dict[str, tuple[list, list]] = {k: ([], []) for k in ("train", "val", "test")}
        with open(src, newline="") as f:
            reader = csv.DictReader(f, skipinitialspace=True)  # icml's header has ", Usage"
            for row in reader:
                split = self.USAGE.get(row["Usage"].strip())
                if split is None:
                    continue
                px = np.array(row["pixels"].split(), dtype=np.uint8)
                if px.size != 48 * 48:
                    raise DatasetUnavailable(f"{src}: a row has {px.size} pixels, not 48x48")
                parts[split][0].append(px.reshape(48, 48))
                parts[split][1].append(int(row["emotion"]))
        tensors = {}
        for split, (xs, ys) in parts.items():
            if not xs:
                raise DatasetUnavailable(
                    f"{src} has no {split} rows (Usage column); rerun download"
                )
            tensors[f"{split}_x"] = torch.from_numpy(np.stack(xs))
            tensors[f"{split}_y"] = torch.tensor(ys, dtype=torch.int64)
        _check_classes("FER2013", tensors["train_y"].numpy(), self.info.num_classes, src)
        path = d / "data.safetensors"
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"source": src.name})
        return "existing", [src, path]

    def load(self, d: Path) -> _Raw:
        from safetensors.torch import load_file

        path = d / "data.safetensors"
        if not path.is_file():
            raise DatasetUnavailable(f"{path} missing; rerun the download stage")
        t = load_file(str(path))
        return _Raw(
            t["train_x"], t["train_y"], t["test_x"], t["test_y"], 255.0, t["val_x"], t["val_y"]
        )


# -- image-folder datasets -------------------------------------------------------------------
_INDEX_ERRORS = (RuntimeError, OSError, ValueError, KeyError, IndexError)
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def _check_classes(title: str, labels, num_classes: int, where) -> None:
    found = np.unique(np.asarray(labels))
    if len(found) != num_classes or found.min() != 0 or found.max() != num_classes - 1:
        raise DatasetUnavailable(
            f"{title} under {where} has {len(found)} classes in its train split, expected "
            f"{num_classes} (labels 0..{num_classes - 1}); the copy is incomplete: replace it "
            f"and rerun the download stage"
        )


def _write_index(d: Path, split: str, paths: Sequence, labels: Sequence[int]) -> Path:
    out = d / f"index-{split}.tsv"
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        for p, y in zip(paths, labels, strict=True):
            rel = Path(p).relative_to(d).as_posix() if Path(p).is_absolute() else str(p)
            if "\t" in rel or "\n" in rel:
                raise DatasetUnavailable(f"unsupported file name {rel!r} under {d}")
            f.write(f"{rel}\t{int(y)}\n")
    return out


def _read_index(d: Path, split: str) -> tuple[list[str], torch.Tensor]:
    path = d / f"index-{split}.tsv"
    if not path.is_file():
        raise DatasetUnavailable(f"{path} missing; rerun the download stage")
    paths, labels = [], []
    with open(path) as f:
        for line in f:
            rel, y = line.rstrip("\n").split("\t")
            paths.append(rel)
            labels.append(int(y))
    return paths, torch.tensor(labels, dtype=torch.int64)


class _ImageFolder:
    """Shared prepare/load of on-disk datasets; subclasses say how to index and fetch.

    ``_index(d)`` returns {split: (paths, labels)} for the official splits ("train", "test"
    and optionally "val"), raising one of ``_INDEX_ERRORS`` when the layout is absent.
    ``_download(d)`` fetches the data (None: manual download only, ``manual`` says how).
    """

    info: DatasetInfo
    title: str
    layout: str  # one line: what goes where, relative to the dataset dir
    annotations: tuple[str, ...] = ()  # small files worth a hash in the manifest
    _download: Callable[[Path], None] | None = None
    manual: str | None = None

    def _index(self, d: Path) -> dict[str, tuple[list, list]]:
        raise NotImplementedError

    def prepare(self, d: Path) -> tuple[str, list[Path]]:
        source = "existing"
        try:
            index = self._index(d)
        except _INDEX_ERRORS as e:
            if self._download is None:
                raise DatasetUnavailable(
                    f"{self.title} needs a manual download ({self.manual}): place "
                    f"{self.layout} under {d}/ and rerun the download stage"
                ) from e
            try:
                self._download(d)
            except Exception as e2:  # offline failures vary (URLError, timeouts, md5)
                raise DatasetUnavailable(
                    f"{self.title} not found and download failed (offline? "
                    f"{type(e2).__name__}): place {self.layout} under {d}/ and rerun the "
                    f"download stage"
                ) from e2
            source = "torchvision-download"
            index = self._index(d)
        _check_classes(self.title, index["train"][1], self.info.num_classes, d)
        files = []
        for split, (paths, labels) in index.items():
            if not paths:
                raise DatasetUnavailable(f"{self.title} under {d} has an empty {split} split")
            files.append(_write_index(d, split, paths, labels))
        for split in index:  # one decodable image per split proves the layout
            rel = _read_index(d, split)[0][0]
            try:
                from PIL import Image

                with Image.open(d / rel) as im:
                    im.verify()
            except Exception as e:
                raise DatasetUnavailable(
                    f"{self.title}: {d / rel} is not a readable image ({type(e).__name__}); "
                    f"replace the copy and rerun the download stage"
                ) from e
        return source, files + [d / a for a in self.annotations]

    def load(self, d: Path) -> _Files:
        train = _read_index(d, "train")
        test = _read_index(d, "test")
        val = _read_index(d, "val") if (d / "index-val.tsv").is_file() else (None, None)
        return _Files(d, train[0], train[1], test[0], test[1], val[0], val[1])


def _tv_split_files(cls, d: Path, split: str, files_attr: str, labels_attr: str = "_labels"):
    ds = cls(str(d), split=split, download=False)
    return [Path(p) for p in getattr(ds, files_attr)], list(getattr(ds, labels_attr))


def _scan_class_dirs(top: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for label, c in enumerate(classes):
        with os.scandir(top / c) as it:
            names = sorted(e.name for e in it if e.name.lower().endswith(_IMAGE_EXTS))
        paths.extend(top / c / n for n in names)
        labels.extend([label] * len(names))
    return paths, labels


@DATASETS.register("imagenet")
class _ImageNet(_ImageFolder):
    """ILSVRC-2012: train -> train (val carved from it), the official val -> test.

    Layout: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (what torchvision's ImageNet
    extracts, and the usual cluster copy). Classes are the sorted wnids, torchvision's order,
    so a pretrained 1000-way head keeps its meaning.
    """

    info = DatasetInfo("imagenet", 1000, 3, 224, IMAGENET_MEAN, IMAGENET_STD)
    title = "ImageNet (ILSVRC-2012)"
    ARCHIVES = (
        "ILSVRC2012_img_train.tar",
        "ILSVRC2012_img_val.tar",
        "ILSVRC2012_devkit_t12.tar.gz",
    )
    layout = (
        "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (1000 class folders each), or the archives "
        + ", ".join(ARCHIVES)
    )
    manual = "image-net.org login"

    def _index(self, d: Path):
        if not (d / "train").is_dir() and all((d / a).is_file() for a in self.ARCHIVES):
            from torchvision.datasets import ImageNet

            ImageNet(str(d), split="train")  # extracts train/<wnid>/ and val/<wnid>/
            ImageNet(str(d), split="val")
        classes = sorted(e.name for e in os.scandir(d / "train") if e.is_dir())
        val_classes = sorted(e.name for e in os.scandir(d / "val") if e.is_dir())
        if val_classes != classes:
            raise RuntimeError("train/ and val/ hold different class folders")
        return {
            "train": _scan_class_dirs(d / "train", classes),
            "test": _scan_class_dirs(d / "val", classes),
        }


@DATASETS.register("stanford_cars")
class _StanfordCars(_ImageFolder):
    info = DatasetInfo("stanford_cars", 196, 3, 224, IMAGENET_MEAN, IMAGENET_STD)
    title = "Stanford Cars"
    layout = (
        "stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/, "
        "cars_test/, cars_test_annos_withlabels.mat}"
    )
    manual = "its original URL is dead; e.g. the Kaggle copy"
    annotations = (
        "stanford_cars/devkit/cars_meta.mat",
        "stanford_cars/devkit/cars_train_annos.mat",
        "stanford_cars/cars_test_annos_withlabels.mat",
    )

    def _index(self, d: Path):
        from torchvision.datasets import StanfordCars

        out = {}
        for split in ("train", "test"):
            samples = StanfordCars(str(d), split=split, download=False)._samples
            out[split] = ([Path(p) for p, _ in samples], [y for _, y in samples])
        return out


@DATASETS.register("flowers102")
class _Flowers102(_ImageFolder):
    info = DatasetInfo("flowers102", 102, 3, 224, IMAGENET_MEAN, IMAGENET_STD)
    title = "Flowers-102"
    layout = "flowers-102/{jpg/, imagelabels.mat, setid.mat}"
    annotations = ("flowers-102/imagelabels.mat", "flowers-102/setid.mat")

    def _index(self, d: Path):
        from torchvision.datasets import Flowers102

        return {
            s: _tv_split_files(Flowers102, d, s, "_image_files") for s in ("train", "val", "test")
        }

    def _download(self, d: Path) -> None:
        from torchvision.datasets import Flowers102

        Flowers102(str(d), download=True)


@DATASETS.register("food101")
class _Food101(_ImageFolder):
    info = DatasetInfo("food101", 101, 3, 224, IMAGENET_MEAN, IMAGENET_STD)
    title = "Food-101"
    layout = "food-101/{images/<class>/*.jpg, meta/train.json, meta/test.json}"
    annotations = ("food-101/meta/train.json", "food-101/meta/test.json")

    def _index(self, d: Path):
        from torchvision.datasets import Food101

        return {s: _tv_split_files(Food101, d, s, "_image_files") for s in ("train", "test")}

    def _download(self, d: Path) -> None:
        from torchvision.datasets import Food101

        Food101(str(d), download=True)


@DATASETS.register("oxford_pets")
class _OxfordPets(_ImageFolder):
    """Oxford-IIIT Pet, 37 breeds: trainval -> train (val carved from it), test -> test."""

    info = DatasetInfo("oxford_pets", 37, 3, 224, IMAGENET_MEAN, IMAGENET_STD)
    title = "Oxford-IIIT Pet"
    layout = "oxford-iiit-pet/{images/*.jpg, annotations/trainval.txt, annotations/test.txt}"
    annotations = (
        "oxford-iiit-pet/annotations/trainval.txt",
        "oxford-iiit-pet/annotations/test.txt",
    )

    def _index(self, d: Path):
        from torchvision.datasets import OxfordIIITPet

        return {
            "train": _tv_split_files(OxfordIIITPet, d, "trainval", "_images"),
            "test": _tv_split_files(OxfordIIITPet, d, "test", "_images"),
        }

    def _download(self, d: Path) -> None:
        from torchvision.datasets import OxfordIIITPet

        OxfordIIITPet(str(d), download=True)


@DATASETS.register("inaturalist")
class _INaturalist(_ImageFolder):
    """iNaturalist 2021 "mini": 10 000 species, 50 train images each (train_mini -> train,
    val carved from it); the official 2021 validation set (10 per species) -> test."""

    info = DatasetInfo("inaturalist", 10_000, 3, 224, IMAGENET_MEAN, IMAGENET_STD)
    title = "iNaturalist 2021 (train_mini + valid)"
    VERSIONS = {"train": "2021_train_mini", "test": "2021_valid"}
    layout = "2021_train_mini/<00000_Kingdom_..._species>/*.jpg and 2021_valid/<same folders>/"

    def _index(self, d: Path):
        from torchvision.datasets import INaturalist

        out, categories = {}, None
        for split, version in self.VERSIONS.items():
            ds = INaturalist(str(d), version=version, download=False)
            if categories is not None and ds.all_categories != categories:
                raise RuntimeError(f"{version} has different species folders than train")
            categories = ds.all_categories
            items = sorted((f"{version}/{categories[c]}/{f}", c) for c, f in ds.index)
            out[split] = ([p for p, _ in items], [c for _, c in items])
        return out

    def _download(self, d: Path) -> None:
        from torchvision.datasets import INaturalist

        for version in self.VERSIONS.values():
            INaturalist(str(d), version=version, download=True)
