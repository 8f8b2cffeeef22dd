"""In-memory sources: Fashion-MNIST (Debian's package offline, torchvision online) and
scikit-learn's 8x8 digits."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from idap.core.io import atomic_path
from idap.data.registry import DATASETS, DatasetInfo, DatasetUnavailable, RawTensors
from idap.data.splits import stratified_split

# Where Debian's ``dataset-fashion-mnist`` package installs the idx files; tests point it elsewhere.
FASHION_MNIST_ENV = "IDAP_FASHION_MNIST_DIR"
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def gunzip(src: Path, dst: Path) -> None:
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
                    gunzip(f.with_name(f.name + ".gz"), f)
            return "existing", files
        deb = Path(os.environ.get(FASHION_MNIST_ENV, FASHION_MNIST_DEBIAN_DIR))
        if all((deb / f"{f.name}.gz").is_file() for f in files):
            for f in files:
                gunzip(deb / f"{f.name}.gz", f)
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

    def load(self, d: Path) -> RawTensors:
        from torchvision.datasets import FashionMNIST

        try:
            tr = FashionMNIST(str(d), train=True, download=False)
            te = FashionMNIST(str(d), train=False, download=False)
        except RuntimeError as e:
            raise DatasetUnavailable(
                f"Fashion-MNIST idx files missing under {d / 'FashionMNIST' / 'raw'}; "
                f"rerun the download stage"
            ) from e
        return RawTensors(tr.data, tr.targets, te.data, te.targets, 255.0)


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

    def load(self, d: Path) -> RawTensors:
        from safetensors.torch import load_file

        path = d / "data.safetensors"
        if not path.is_file():
            raise DatasetUnavailable(f"{path} missing; rerun the download stage")
        t = load_file(str(path))
        return RawTensors(t["train_x"], t["train_y"], t["test_x"], t["test_y"], 16.0)
