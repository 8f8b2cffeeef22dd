"""The paper grid's datasets, each on a tiny fabricated copy of its real on-disk layout.

Every copy has the folders, file names and annotation formats torchvision (or the release)
uses, with a few tiny images per class; md5 checks that cannot pass on fabricated files are
monkeypatched. Each dataset's missing/offline failure is one line saying what to place where.
Finally the paper config (config/paper.yaml) validates against the schema.
"""

import csv
import gzip
import json
import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision
from PIL import Image

import idap.data as ds
from idap.core.config import load_config
from idap.core.io import read_json, sha256_file
from idap.data import (
    DatasetInfo,
    DatasetUnavailable,
    ImageFiles,
    ResizedTensors,
    dataset_info,
    load_splits,
    make_loader,
    prepare_dataset,
)
from idap.data.sources import folders
from idap.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from idap.models import get_spec

PAPER_DATASETS = [
    "imagenet",
    "cifar100",
    "cifar10",
    "stanford_cars",
    "flowers102",
    "inaturalist",
    "food101",
    "oxford_pets",
    "fashion_mnist",
    "fer2013",
]
PAPER_MODELS = [
    "resnet50",
    "efficientnet_b4",
    "vit_b_16",
    "mobilenet_v3_large",
    "densenet121",
    "convnext_small",
    "vgg19_bn",
    "shufflenet_v2_x2_0",
    "inception_v3",
    "efficientnet_v2_s",
]


def _colour(label: int) -> tuple[int, int, int]:
    """A flat colour that encodes the label (red) and survives JPEG within a few levels."""
    return (40 + 2 * (label % 100), 128, 200)


def _jpeg(path: Path, label: int, size=(20, 14)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, _colour(label)).save(path, "JPEG", quality=95)


def _red_level(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Undo the normalisation of the red channel, back to 0..255."""
    return (x[0] * info.std[0] + info.mean[0]) * 255


def _check_files_splits(name, root, n_train, n_test, n_val=None, size=40):
    """Shared checks on a prepared image-folder dataset."""
    info = dataset_info(name)
    m = read_json(root / name / "manifest.json")
    sizes = {"train": n_train, "test": n_test} | ({"val": n_val} if n_val else {})
    assert m["sizes"] == sizes and m["num_classes"] == info.num_classes
    for rel, digest in m["sha256"].items():
        assert sha256_file(root / name / rel) == digest
    s = load_splits(name, root, seed=3, image_size=size)
    assert all(isinstance(p, ImageFiles) for p in (s.train, s.val, s.test))
    if n_val is None:  # carved from train: 10%, stratified
        assert len(s.val) == round(0.1 * n_train) and len(s.train) == n_train - len(s.val)
        assert not set(s.train.paths) & set(s.val.paths)
    else:
        assert len(s.val) == n_val and len(s.train) == n_train
    assert len(s.test) == n_test
    x, y = s.test[0]
    assert x.shape == (3, size, size) and x.dtype == torch.float32 and y.dtype == torch.int64
    # the flat colour comes back through decode + resize + crop + normalise
    red = _red_level(x, info)
    assert torch.allclose(red, torch.full_like(red, _colour(int(y))[0]), atol=4)
    assert int(y) == int(s.test.labels[0])
    xb, yb = next(iter(make_loader(s.train, 4, shuffle=True, seed=0, num_workers=0)))
    assert xb.shape == (4, 3, size, size) and yb.dtype == torch.int64
    # same arguments, same splits; augmentation touches train only and keeps shapes
    again = load_splits(name, root, seed=3, image_size=size)
    assert again.val.paths == s.val.paths and again.train.paths == s.train.paths
    aug = load_splits(name, root, seed=3, image_size=size, augment=True)
    assert aug.train[0][0].shape == (3, size, size)
    assert torch.equal(aug.val[0][0], s.val[0][0])
    return s


def _fails_one_line(name, root, *needles):
    with pytest.raises(DatasetUnavailable) as e:
        prepare_dataset(name, root)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert str(n) in msg, (n, msg)
    assert not (root / name / "manifest.json").exists()
    return msg


def _offline(monkeypatch, cls, method):
    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cls, method, offline)


# ------------------------------------------------------------------------------- registry


def test_registry_has_the_ten_datasets():
    assert set(PAPER_DATASETS) <= set(ds.DATASETS.names())
    classes = {
        "imagenet": 1000,
        "cifar100": 100,
        "cifar10": 10,
        "stanford_cars": 196,
        "flowers102": 102,
        "inaturalist": 10_000,
        "food101": 101,
        "oxford_pets": 37,
        "fashion_mnist": 10,
        "fer2013": 7,
    }
    for name, n in classes.items():
        info = dataset_info(name)
        assert info.num_classes == n and len(info.mean) == len(info.std) == info.in_chans
    assert dataset_info("fer2013").in_chans == 1 and dataset_info("fer2013").image_size == 48


def test_paper_config_is_valid_and_covers_the_grid():
    cfg = load_config("config/paper.yaml")
    assert sorted(cfg["grid"]["datasets"]) == sorted(PAPER_DATASETS)
    assert sorted(cfg["grid"]["models"]) == sorted(PAPER_MODELS)
    assert cfg["device"] == "cuda"
    assert all(0.6 <= t < 1 for t in cfg["grid"]["targets"])


# ------------------------------------------------------------------------------- cifar100


def _write_fake_cifar100(folder: Path, per_class_train=2, per_class_test=1):
    folder.mkdir(parents=True)

    def batch(per_class):
        labels = [c for c in range(100) for _ in range(per_class)]
        rgb = np.zeros((len(labels), 3, 32, 32), np.uint8)
        rgb[:, 0] = np.array(labels, np.uint8)[:, None, None]  # red = label
        rgb[:, 1], rgb[:, 2] = 7, 250
        return {
            "data": rgb.reshape(len(labels), -1),
            "fine_labels": labels,
            "coarse_labels": [c // 5 for c in labels],
        }

    for name, per_class in (("train", per_class_train), ("test", per_class_test)):
        with open(folder / name, "wb") as f:
            pickle.dump(batch(per_class), f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)


@pytest.fixture
def cifar100_root(tmp_path, monkeypatch):
    _write_fake_cifar100(tmp_path / "cifar100" / "cifar-100-python")
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    prepare_dataset("cifar100", tmp_path)
    return tmp_path


def test_cifar100_native_and_resized(cifar100_root):
    m = read_json(cifar100_root / "cifar100" / "manifest.json")
    assert m["source"] == "existing" and m["sizes"] == {"train": 200, "test": 100}
    info = dataset_info("cifar100")
    s = load_splits("cifar100", cifar100_root)
    assert isinstance(s.train, torch.utils.data.TensorDataset)  # native 32 px: in memory
    assert len(s.train) == 180 and len(s.val) == 20 and len(s.test) == 100
    x = s.train.tensors[0]
    assert x.shape == (180, 3, 32, 32)
    assert torch.equal(_red_level(x[:, :, 5, 5].T, info).round(), s.train.tensors[1].float())
    # at a model's resolution: same split, resized on access
    r = load_splits("cifar100", cifar100_root, image_size=64)
    assert isinstance(r.train, ResizedTensors) and len(r.train) == 180
    assert torch.equal(r.val.y, s.val.tensors[1])
    xi, yi = r.val[3]
    assert xi.shape == (3, 64, 64) and yi == s.val.tensors[1][3]
    small = s.val.tensors[0][3]
    assert torch.allclose(xi[:, 20, 20], small[:, 10, 10], atol=1e-5)  # flat image stays flat
    xb, yb = next(iter(make_loader(r.train, 16, shuffle=True, seed=1)))
    assert xb.shape == (16, 3, 64, 64) and yb.dtype == torch.int64
    aug = load_splits("cifar100", cifar100_root, augment=True)  # native size, augmented
    assert isinstance(aug.train, ResizedTensors) and aug.train[0][0].shape == (3, 32, 32)
    assert isinstance(aug.val, ResizedTensors) and not aug.val.augment


def test_cifar100_offline_error(tmp_path, monkeypatch):
    _offline(monkeypatch, torchvision.datasets.CIFAR100, "download")
    _fails_one_line("cifar100", tmp_path, "cifar-100-python/", tmp_path / "cifar100", "URLError")


def test_in_memory_datasets_resize_for_pretrained_models(tmp_path, monkeypatch):
    """Fashion-MNIST (28 px, grey) at a ViT's 224 px: one item at a time, never all at once."""
    deb = tmp_path / "deb"
    deb.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 10)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(
                f">{arr.ndim}I", *arr.shape
            )
            (deb / f"{split}-{kind}-ubyte.gz").write_bytes(gzip.compress(head + arr.tobytes()))
    monkeypatch.setenv("IDAP_FASHION_MNIST_DIR", str(deb))
    prepare_dataset("fashion_mnist", tmp_path / "data")
    size = get_spec("vit_b_16").input_size
    s = load_splits("fashion_mnist", tmp_path / "data", image_size=size)
    assert isinstance(s.train, ResizedTensors) and s.train.x.dtype == torch.uint8
    x, y = s.test[0]
    assert x.shape == (1, 224, 224) and y.dtype == torch.int64
    native = load_splits("fashion_mnist", tmp_path / "data")
    assert torch.equal(native.val.tensors[1], s.val.y)


# ------------------------------------------------------------------------------- fer2013


def _pixels(label: int) -> str:
    return " ".join(str(40 * label + (i % 3)) for i in range(48 * 48))


def _write_fer(folder: Path, icml: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    counts = {"Training": 3, "PublicTest": 1, "PrivateTest": 2}
    rows = [(c, u) for u, n in counts.items() for c in range(7) for _ in range(n)]
    if icml:  # the other release: spaces after the commas in the header
        with open(folder / "icml_face_data.csv", "w", newline="") as f:
            f.write("emotion, Usage, pixels\n")
            for c, u in rows:
                f.write(f"{c},{u},{_pixels(c)}\n")
    else:
        with open(folder / "fer2013.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["emotion", "pixels", "Usage"])
            for c, u in rows:
                w.writerow([c, _pixels(c), u])


@pytest.mark.parametrize("icml", [False, True])
def test_fer2013_official_splits(tmp_path, icml):
    _write_fer(tmp_path / "fer2013" / "fer2013", icml=icml)
    m = read_json(prepare_dataset("fer2013", tmp_path))
    assert m["sizes"] == {"train": 21, "val": 7, "test": 14}
    s = load_splits("fer2013", tmp_path)
    assert len(s.train) == 21 and len(s.val) == 7 and len(s.test) == 14  # PublicTest is val
    x, y = s.train.tensors
    assert x.shape == (21, 1, 48, 48)
    info = dataset_info("fer2013")
    grey = (x[:, 0, 0, 0] * info.std[0] + info.mean[0]) * 255
    assert torch.allclose(grey, 40 * y.float(), atol=1e-3)
    assert torch.bincount(s.val.tensors[1]).tolist() == [1] * 7
    sub = load_splits("fer2013", tmp_path, train_subset=14)
    assert len(sub.train) == 14 and torch.equal(sub.val.tensors[0], s.val.tensors[0])
    big = load_splits("fer2013", tmp_path, image_size=299)
    assert big.test[0][0].shape == (1, 299, 299)


def test_fer2013_missing_and_kaggle_only(tmp_path):
    folder = tmp_path / "fer2013" / "fer2013"
    msg = _fails_one_line("fer2013", tmp_path, "fer2013.csv", folder, "manual download")
    assert "test.csv" not in msg
    folder.mkdir(parents=True)
    (folder / "train.csv").write_text("emotion,pixels\n")
    _fails_one_line("fer2013", tmp_path, "test.csv has no labels")


# ------------------------------------------------------------------------------- imagenet


def _write_imagenet(d: Path, n_classes=1000, per_train=2, per_val=1):
    wnids = [f"n{10_000_000 + 37 * i:08d}" for i in range(n_classes)]
    for label, w in enumerate(wnids):
        for j in range(per_train):
            _jpeg(d / "train" / w / f"{w}_{j}.JPEG", label)
        for j in range(per_val):
            _jpeg(d / "val" / w / f"ILSVRC2012_val_{label:05d}{j}.JPEG", label)
    return wnids


def test_imagenet_folder_layout(tmp_path):
    _write_imagenet(tmp_path / "imagenet")
    m = read_json(prepare_dataset("imagenet", tmp_path))
    assert m["source"] == "existing" and set(m["sha256"]) == {"index-train.tsv", "index-test.tsv"}
    s = _check_files_splits("imagenet", tmp_path, 2000, 1000)
    # classes are the sorted wnids (torchvision's order): label i is the i-th folder
    assert s.test.paths[0].startswith("val/n10000000/") and int(s.test.labels[0]) == 0
    assert torch.bincount(s.val.labels, minlength=1000).max() == 1  # 200 of 1000 classes


def test_imagenet_missing_and_incomplete(tmp_path):
    _fails_one_line(
        "imagenet", tmp_path, "manual download", "ILSVRC2012_img_val.tar", tmp_path / "imagenet"
    )
    _write_imagenet(tmp_path / "imagenet", n_classes=5, per_train=1)
    _fails_one_line("imagenet", tmp_path, "has 5 classes", "expected 1000")


# ------------------------------------------------------------------------------- stanford cars


def _annos(rows):
    dtype = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    return np.array([(1, 1, 10, 10, c, f) for c, f in rows], dtype=dtype)


def _write_cars(d: Path):
    base = d / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    train = [(c + 1, f"{c:05d}.jpg") for c in range(196)]
    test = [(c + 1, f"{c:05d}.jpg") for c in range(196)] + [(1, "99999.jpg")]
    for cls, fname in train:
        _jpeg(base / "cars_train" / fname, cls - 1)
    for cls, fname in test:
        _jpeg(base / "cars_test" / fname, cls - 1)
    names = np.array([f"Make Model {i}" for i in range(196)], dtype=object)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    scipy.io.savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": _annos(train)})
    scipy.io.savemat(base / "cars_test_annos_withlabels.mat", {"annotations": _annos(test)})


def test_stanford_cars_layout(tmp_path):
    _write_cars(tmp_path / "stanford_cars")
    m = read_json(prepare_dataset("stanford_cars", tmp_path))
    assert "stanford_cars/devkit/cars_meta.mat" in m["sha256"]
    s = _check_files_splits("stanford_cars", tmp_path, 196, 197)
    assert s.test.paths[0] == "stanford_cars/cars_test/00000.jpg"


def test_stanford_cars_missing_is_manual(tmp_path):
    _fails_one_line(
        "stanford_cars",
        tmp_path,
        "manual download",
        "cars_test_annos_withlabels.mat",
        tmp_path / "stanford_cars",
    )


# ------------------------------------------------------------------------------- flowers102


def _write_flowers(d: Path):
    base = d / "flowers-102"
    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    image_id = 0
    for c in range(102):
        for key, n in (("trnid", 2), ("valid", 1), ("tstid", 1)):
            for _ in range(n):
                image_id += 1
                labels.append(c + 1)  # 1-based in the .mat
                ids[key].append(image_id)
                _jpeg(base / "jpg" / f"image_{image_id:05d}.jpg", c)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array(labels)})
    scipy.io.savemat(base / "setid.mat", {k: np.array(v) for k, v in ids.items()})


def test_flowers102_official_val(tmp_path, monkeypatch):
    _write_flowers(tmp_path / "flowers102")
    # the fabricated .mat files cannot match torchvision's md5 sums
    monkeypatch.setattr(torchvision.datasets.flowers102, "check_integrity", lambda *a, **k: True)
    m = read_json(prepare_dataset("flowers102", tmp_path))
    assert m["source"] == "existing" and "flowers-102/setid.mat" in m["sha256"]
    s = _check_files_splits("flowers102", tmp_path, 204, 102, n_val=102)
    assert torch.bincount(s.val.labels).tolist() == [1] * 102


def test_flowers102_offline(tmp_path, monkeypatch):
    _offline(monkeypatch, torchvision.datasets.Flowers102, "download")
    _fails_one_line("flowers102", tmp_path, "URLError", "imagelabels.mat", tmp_path / "flowers102")


# ------------------------------------------------------------------------------- food101


def _write_food(d: Path):
    base = d / "food-101"
    classes = [f"dish_{i:03d}" for i in range(101)]
    meta = {"train": {}, "test": {}}
    for label, c in enumerate(classes):
        for split, n in (("train", 2), ("test", 1)):
            ids = [f"{c}/{split}{j}" for j in range(n)]
            meta[split][c] = ids
            for rel in ids:
                _jpeg(base / "images" / f"{rel}.jpg", label)
    (base / "meta").mkdir(parents=True)
    for split, content in meta.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(content))


def test_food101_layout(tmp_path):
    _write_food(tmp_path / "food101")
    assert read_json(prepare_dataset("food101", tmp_path))["source"] == "existing"
    s = _check_files_splits("food101", tmp_path, 202, 101)
    assert s.test.paths[0] == "food-101/images/dish_000/test0.jpg"


def test_food101_offline(tmp_path, monkeypatch):
    _offline(monkeypatch, torchvision.datasets.Food101, "_download")
    _fails_one_line("food101", tmp_path, "URLError", "meta/train.json", tmp_path / "food101")


# ------------------------------------------------------------------------------- oxford pets


def _write_pets(d: Path):
    base = d / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True)
    for split, n in (("trainval", 3), ("test", 1)):
        lines = []
        for c in range(37):
            breed = f"Breed{c}" if c % 2 else f"breed_{c}"  # cats capitalised, as in the release
            for j in range(n):
                image_id = f"{breed}_{split}{j}"
                lines.append(f"{image_id} {c + 1} {1 + c % 2} {c + 1}")
                _jpeg(base / "images" / f"{image_id}.jpg", c)
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")


def test_oxford_pets_layout(tmp_path):
    _write_pets(tmp_path / "oxford_pets")
    assert read_json(prepare_dataset("oxford_pets", tmp_path))["source"] == "existing"
    s = _check_files_splits("oxford_pets", tmp_path, 111, 37)
    assert s.test.labels.tolist() == list(range(37))  # annotation labels are 1-based
    assert torch.bincount(s.val.labels, minlength=37).max() == 1


def test_oxford_pets_offline(tmp_path, monkeypatch):
    _offline(monkeypatch, torchvision.datasets.OxfordIIITPet, "_download")
    _fails_one_line("oxford_pets", tmp_path, "URLError", "trainval.txt", tmp_path / "oxford_pets")


# ------------------------------------------------------------------------------- inaturalist

_SPECIES = [
    "00000_Animalia_Chordata_Aves_Passeriformes_Corvidae_Corvus_corax",
    "00001_Plantae_Tracheophyta_Magnoliopsida_Fagales_Fagaceae_Quercus_robur",
    "00002_Fungi_Basidiomycota_Agaricomycetes_Agaricales_Amanitaceae_Amanita_muscaria",
]


def _write_inat(d: Path, species=_SPECIES):
    for label, sp in enumerate(species):
        for version, n in (("2021_train_mini", 10), ("2021_valid", 2)):
            for j in range(n):
                _jpeg(d / version / sp / f"{version}-{j:03d}.jpg", label)


def test_inaturalist_layout(tmp_path, monkeypatch):
    _write_inat(tmp_path / "inaturalist")
    # 10 000 species folders would be 20 000 files: the layout is checked on 3
    small = DatasetInfo("inaturalist", 3, 3, 224, IMAGENET_MEAN, IMAGENET_STD)
    monkeypatch.setattr(folders._INaturalist, "info", small)
    prepare_dataset("inaturalist", tmp_path)
    s = _check_files_splits("inaturalist", tmp_path, 30, 6)
    assert s.test.paths[0] == f"2021_valid/{_SPECIES[0]}/2021_valid-000.jpg"
    assert torch.bincount(s.val.labels).tolist() == [1, 1, 1]


def test_inaturalist_wrong_species_count_and_offline(tmp_path, monkeypatch):
    _write_inat(tmp_path / "a" / "inaturalist")
    _fails_one_line("inaturalist", tmp_path / "a", "has 3 classes", "expected 10000")
    _offline(monkeypatch, torchvision.datasets.INaturalist, "download")
    _fails_one_line("inaturalist", tmp_path / "b", "URLError", "2021_train_mini/")


def test_image_files_loader_uses_workers_by_default(tmp_path):
    _jpeg(tmp_path / "a.jpg", 3)
    split = ImageFiles(tmp_path, ["a.jpg"], torch.tensor([3]), lambda im: torch.zeros(1))
    assert make_loader(split, 1, shuffle=False).num_workers >= 1
    assert make_loader(split, 1, shuffle=False, num_workers=0).num_workers == 0
