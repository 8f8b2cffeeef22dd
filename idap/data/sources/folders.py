"""Image-folder sources kept on disk: ImageNet, Stanford Cars, Flowers-102, Food-101,
Oxford-IIIT Pet, iNaturalist 2021-mini. The download stage writes one ``index-<split>.tsv``
(relative path, label) per split; loading reads only the index."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from idap.core.io import atomic_path
from idap.data.registry import (
    DATASETS,
    DatasetInfo,
    DatasetUnavailable,
    RawFiles,
    check_classes,
)
from idap.data.transforms import IMAGENET_MEAN, IMAGENET_STD

_INDEX_ERRORS = (RuntimeError, OSError, ValueError, KeyError, IndexError)
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


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
        check_classes(self.title, index["train"][1], self.info.num_classes, d)
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

    def load(self, d: Path) -> RawFiles:
        train = _read_index(d, "train")
        test = _read_index(d, "test")
        val = _read_index(d, "val") if (d / "index-val.tsv").is_file() else (None, None)
        return RawFiles(d, train[0], train[1], test[0], test[1], val[0], val[1])


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
