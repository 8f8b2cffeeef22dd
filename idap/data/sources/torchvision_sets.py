"""torchvision-backed sources: CIFAR-10/100 (download) and FER2013 (a CSV placed by hand)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from idap.core.io import atomic_path
from idap.data.registry import (
    DATASETS,
    DatasetInfo,
    DatasetUnavailable,
    RawTensors,
    check_classes,
)


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

    def load(self, d: Path) -> RawTensors:
        try:
            tr = self._dataset(d, train=True, download=False)
            te = self._dataset(d, train=False, download=False)
        except RuntimeError as e:
            raise DatasetUnavailable(
                f"{self.label} {self.what} missing or corrupt under {d / self.folder}; "
                f"rerun the download stage"
            ) from e
        x, y = torch.from_numpy, torch.tensor
        return RawTensors(x(tr.data), y(tr.targets), x(te.data), y(te.targets), 255.0)


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
        check_classes("FER2013", tensors["train_y"].numpy(), self.info.num_classes, src)
        path = d / "data.safetensors"
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"source": src.name})
        return "existing", [src, path]

    def load(self, d: Path) -> RawTensors:
        from safetensors.torch import load_file

        path = d / "data.safetensors"
        if not path.is_file():
            raise DatasetUnavailable(f"{path} missing; rerun the download stage")
        t = load_file(str(path))
        return RawTensors(
            t["train_x"], t["train_y"], t["test_x"], t["test_y"], 255.0, t["val_x"], t["val_y"]
        )
