"""Dataset preparation and splits: digits (bundled with sklearn) and fabricated on-disk copies."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision

from idap.core.io import read_json, sha256_file
from idap.core.registry import UnknownNameError
from idap.data import (
    DATASETS,
    DatasetInfo,
    DatasetUnavailable,
    dataset_info,
    load_splits,
    make_loader,
    prepare_dataset,
    stratified_split,
)
from idap.data.splits import split_indices

# ---------------------------------------------------------------- fabricated data


def _idx_bytes(arr: np.ndarray) -> bytes:
    """idx format: magic (0, 0, 0x08 = uint8, ndim), big-endian int32 dims, then the data."""
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def _fake_fashion_images(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose first two pixels encode a unique id, so split rows can be traced back."""
    rng = np.random.default_rng(offset)
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    ids = np.arange(offset, offset + n)
    x[:, 0, 0], x[:, 0, 1] = ids // 256, ids % 256
    y = np.arange(n) % 10
    return x, y


def _write_fashion_gz(folder, n_train=50, n_test=20):
    folder.mkdir(parents=True, exist_ok=True)
    xtr, ytr = _fake_fashion_images(n_train, 0)
    xte, yte = _fake_fashion_images(n_test, 1000)
    for name, arr in [
        ("train-images-idx3-ubyte", xtr),
        ("train-labels-idx1-ubyte", ytr),
        ("t10k-images-idx3-ubyte", xte),
        ("t10k-labels-idx1-ubyte", yte),
    ]:
        (folder / f"{name}.gz").write_bytes(gzip.compress(_idx_bytes(arr)))
    return folder


def _ids(ds) -> set[int]:
    """Recover the fabricated image ids from normalised Fashion-MNIST tensors."""
    info = dataset_info("fashion_mnist")
    px = torch.round((ds.tensors[0][:, 0, 0, :2] * info.std[0] + info.mean[0]) * 255).long()
    return set((px[:, 0] * 256 + px[:, 1]).tolist())


@pytest.fixture
def no_fashion_source(tmp_path, monkeypatch):
    """No Debian dir and a download that fails, as on an offline machine."""
    monkeypatch.setenv("IDAP_FASHION_MNIST_DIR", str(tmp_path / "no-such-dir"))

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirror, got:\n")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", offline)


@pytest.fixture
def fashion_root(tmp_path, monkeypatch):
    monkeypatch.setenv("IDAP_FASHION_MNIST_DIR", str(_write_fashion_gz(tmp_path / "deb")))
    root = tmp_path / "data"
    prepare_dataset("fashion_mnist", root)
    return root


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    prepare_dataset("digits", root)
    return root


# ---------------------------------------------------------------- stratified_split


def test_stratified_split_is_proportional_disjoint_and_seeded():
    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    keep, hold = stratified_split(y, 27, seed=3)
    assert len(hold) == 27 and len(keep) == 73
    assert np.intersect1d(keep, hold).size == 0
    assert np.array_equal(np.sort(np.concatenate([keep, hold])), np.arange(100))
    for c, count in enumerate([50, 30, 15, 5]):
        assert abs((y[hold] == c).sum() - 27 * count / 100) < 1
    again = stratified_split(y, 27, seed=3)
    assert np.array_equal(hold, again[1]) and np.array_equal(keep, again[0])
    assert not np.array_equal(hold, stratified_split(y, 27, seed=4)[1])


def test_stratified_split_edges():
    y = np.array([0, 0, 1, 1, 1])
    assert len(stratified_split(y, 0, 0)[1]) == 0
    assert len(stratified_split(y, 5, 0)[0]) == 0
    with pytest.raises(ValueError):
        stratified_split(y, 6, 0)


# ---------------------------------------------------------------- registry / info


def test_registry_and_info():
    assert {"cifar10", "digits", "fashion_mnist"} <= set(DATASETS.names())
    fm = dataset_info("fashion_mnist")
    assert fm == DatasetInfo("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,))
    c = dataset_info("cifar10")
    assert (c.in_chans, c.image_size, len(c.mean), len(c.std)) == (3, 32, 3, 3)
    assert dataset_info("digits").image_size == 8


@pytest.mark.parametrize(
    "call",
    [
        lambda root: dataset_info("mnist"),
        lambda root: prepare_dataset("mnist", root),
        lambda root: load_splits("mnist", root),
    ],
)
def test_unknown_name_lists_valid_names(call, tmp_path):
    with pytest.raises(UnknownNameError) as e:
        call(tmp_path)
    msg = str(e.value)
    assert "'mnist'" in msg
    assert all(n in msg for n in ["cifar10", "digits", "fashion_mnist"])


def test_load_before_prepare_says_run_download(tmp_path):
    with pytest.raises(DatasetUnavailable) as e:
        load_splits("digits", tmp_path)
    assert "download stage" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- digits


def test_digits_prepare_writes_safetensors_and_manifest(digits_root):
    d = digits_root / "digits"
    m = read_json(d / "manifest.json")
    assert m["name"] == "digits" and m["num_classes"] == 10 and m["source"] == "sklearn"
    assert m["sizes"] == {"train": 1438, "test": 359}  # 1797 with a 20% test split
    assert m["sha256"] == {"data.safetensors": sha256_file(d / "data.safetensors")}
    assert not list(d.glob(".*tmp"))  # atomic writes leave no temp files
    # safetensors header (little-endian u64 length + JSON), not a pickle
    assert (d / "data.safetensors").read_bytes()[8:9] == b"{"


def test_digits_prepare_is_deterministic(digits_root, tmp_path):
    prepare_dataset("digits", tmp_path)
    a, b = (read_json(r / "digits" / "manifest.json")["sha256"] for r in (digits_root, tmp_path))
    assert a == b


def test_digits_splits_shapes_sizes_and_values(digits_root):
    s = load_splits("digits", digits_root)
    assert s.info == dataset_info("digits")
    assert len(s.val) == round(0.1 * 1438) == 144
    assert len(s.train) == 1438 - 144 and len(s.test) == 359
    x, y = s.train.tensors
    assert x.shape == (1294, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    raw = x * s.info.std[0] + s.info.mean[0]  # undo normalisation: back to k/16 levels
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    assert torch.allclose(raw * 16, torch.round(raw * 16), atol=1e-4)
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1
    assert set(y.tolist()) == set(range(10))


def test_digits_val_is_stratified(digits_root):
    s = load_splits("digits", digits_root, seed=5)
    yv, yt = s.val.tensors[1], s.train.tensors[1]
    both = torch.cat([yv, yt])
    for c in range(10):
        expected = len(yv) * float((both == c).sum()) / len(both)
        assert abs(int((yv == c).sum()) - expected) <= 1


def test_digits_val_max_and_fraction(digits_root):
    assert len(load_splits("digits", digits_root, val_max=50).val) == 50
    s = load_splits("digits", digits_root, val_fraction=0.25)
    assert len(s.val) == round(0.25 * 1438) and len(s.train) == 1438 - len(s.val)


def test_digits_deterministic_and_seed_sensitive(digits_root):
    a = load_splits("digits", digits_root, seed=1, train_subset=300, test_subset=100)
    b = load_splits("digits", digits_root, seed=1, train_subset=300, test_subset=100)
    for part in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, part).tensors, getattr(b, part).tensors, strict=True):
            assert torch.equal(ta, tb)
    c = load_splits("digits", digits_root, seed=2)
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])


def test_digits_train_and_test_subsets(digits_root):
    s = load_splits("digits", digits_root, train_subset=300, test_subset=100)
    assert len(s.train) == 300 and len(s.test) == 100 and len(s.val) == 144
    for ds, n in ((s.train, 300), (s.test, 100)):
        counts = torch.bincount(ds.tensors[1], minlength=10)
        assert counts.min() >= n // 10 - 2 and counts.max() <= n // 10 + 2
    # the subset size does not move the validation set
    full = load_splits("digits", digits_root)
    assert torch.equal(full.val.tensors[0], s.val.tensors[0])
    # asking for more than there is means "all of it"
    assert len(load_splits("digits", digits_root, train_subset=10_000).train) == 1294


def test_split_indices_never_overlap():
    y = np.random.default_rng(0).integers(0, 10, size=1000)
    for seed in range(5):
        for subset in (None, 200):
            train, val = split_indices(y, seed, 0.1, 5000, subset)
            assert np.intersect1d(train, val).size == 0
            assert len(val) == 100 and len(train) == (subset or 900)
    assert len(split_indices(y, 0, 0.5, 30, None)[1]) == 30


# ---------------------------------------------------------------- fashion_mnist


def test_fashion_prepare_from_debian_dir_then_load(fashion_root):
    d = fashion_root / "fashion_mnist"
    m = read_json(d / "manifest.json")
    assert m["source"] == "debian" and m["sizes"] == {"train": 50, "test": 20}
    raw = d / "FashionMNIST" / "raw"
    assert m["sha256"]["FashionMNIST/raw/train-images-idx3-ubyte"] == sha256_file(
        raw / "train-images-idx3-ubyte"
    )
    assert len(m["sha256"]) == 4
    s = load_splits("fashion_mnist", fashion_root, seed=0)
    assert s.train.tensors[0].shape == (45, 1, 28, 28) and len(s.val) == 5 and len(s.test) == 20
    assert s.train.tensors[0].dtype == torch.float32 and s.test.tensors[1].dtype == torch.int64
    # the rows really are the fabricated images: ids are unique and partition the train split
    tr, va = _ids(s.train), _ids(s.val)
    assert len(tr) == 45 and len(va) == 5 and not tr & va and tr | va == set(range(50))
    assert _ids(s.test) == set(range(1000, 1020))
    sub = load_splits("fashion_mnist", fashion_root, seed=0, train_subset=20)
    assert len(sub.train) == 20 and _ids(sub.train) <= tr and _ids(sub.val) == va
    # a second run finds the files in place
    assert read_json(prepare_dataset("fashion_mnist", fashion_root))["source"] == "existing"


def test_fashion_gz_placed_in_raw_dir_is_used(tmp_path, no_fashion_source):
    _write_fashion_gz(tmp_path / "fashion_mnist" / "FashionMNIST" / "raw")
    m = read_json(prepare_dataset("fashion_mnist", tmp_path))
    assert m["source"] == "existing" and m["sizes"] == {"train": 50, "test": 20}


def test_fashion_torchvision_download_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("IDAP_FASHION_MNIST_DIR", str(tmp_path / "no-such-dir"))

    def fake_download(self):  # stands in for the network: writes what torchvision would
        src = _write_fashion_gz(tmp_path / "mirror")
        for f in src.iterdir():
            out = tmp_path / "data" / "fashion_mnist" / "FashionMNIST" / "raw" / f.stem
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(gzip.decompress(f.read_bytes()))

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", fake_download)
    m = read_json(prepare_dataset("fashion_mnist", tmp_path / "data"))
    assert m["source"] == "torchvision-download" and m["sizes"]["train"] == 50


def test_fashion_offline_error_is_one_helpful_line(tmp_path, no_fashion_source):
    with pytest.raises(DatasetUnavailable) as e:
        prepare_dataset("fashion_mnist", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    assert "dataset-fashion-mnist" in msg
    assert str(tmp_path / "fashion_mnist" / "FashionMNIST" / "raw") in msg
    assert not (tmp_path / "fashion_mnist" / "manifest.json").exists()


# ---------------------------------------------------------------- cifar10


def _write_fake_cifar(folder, per_class_batch=2, per_class_test=3):
    folder.mkdir(parents=True)

    def batch(per_class, tag):
        labels = [c for c in range(10) for _ in range(per_class)]
        rgb = np.zeros((len(labels), 3, 32, 32), np.uint8)
        rgb[:, 0], rgb[:, 1], rgb[:, 2] = 255, 0, 128  # distinct channels catch layout bugs
        rgb[:, 1, 0, 0] = np.arange(len(labels))
        return {"batch_label": tag, "labels": labels, "data": rgb.reshape(len(labels), -1)}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(per_class_batch, f"training batch {i} of 5"), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(per_class_test, "testing batch 1 of 1"), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{c}" for c in range(10)]}, f)


def test_cifar10_on_fabricated_layout(tmp_path, monkeypatch):
    _write_fake_cifar(tmp_path / "cifar10" / "cifar-10-batches-py")
    # the fabricated batches cannot match the real md5 sums torchvision checks
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    m = read_json(prepare_dataset("cifar10", tmp_path))
    assert m["source"] == "existing" and m["sizes"] == {"train": 100, "test": 30}
    assert set(m["sha256"]) == {
        f"cifar-10-batches-py/{f}"
        for f in [
            "data_batch_1",
            "data_batch_2",
            "data_batch_3",
            "data_batch_4",
            "data_batch_5",
            "test_batch",
            "batches.meta",
        ]
    }
    s = load_splits("cifar10", tmp_path)
    assert len(s.train) == 90 and len(s.val) == 10 and len(s.test) == 30
    x = s.train.tensors[0]
    assert x.shape == (90, 3, 32, 32) and x.dtype == torch.float32
    mean, std = torch.tensor(s.info.mean), torch.tensor(s.info.std)
    px = x[:, :, 5, 5] * std + mean  # back to [0, 1], channel-first
    assert torch.allclose(px, torch.tensor([1.0, 0.0, 128 / 255]).expand_as(px), atol=1e-5)
    assert torch.bincount(s.val.tensors[1], minlength=10).tolist() == [1] * 10


def test_cifar10_offline_error_is_one_line(tmp_path, monkeypatch):
    def offline(self):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(DatasetUnavailable) as e:
        prepare_dataset("cifar10", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "cifar-10-batches-py/" in msg and str(tmp_path / "cifar10") in msg


# ---------------------------------------------------------------- make_loader


def _order(loader):
    return torch.cat([y for _, y in loader]).tolist()


def test_make_loader_seeded_shuffle():
    ds = torch.utils.data.TensorDataset(torch.zeros(100, 1), torch.arange(100))
    a = make_loader(ds, 16, shuffle=True, seed=7)
    b = make_loader(ds, 16, shuffle=True, seed=7)
    first = _order(a)
    assert first == _order(b) and sorted(first) == list(range(100)) and first != list(range(100))
    second = _order(a)  # the next epoch reshuffles, reproducibly
    assert second == _order(b) and second != first
    assert _order(make_loader(ds, 16, shuffle=True, seed=8)) != first
    torch.manual_seed(123)  # the global RNG has no say
    assert _order(make_loader(ds, 16, shuffle=True, seed=7)) == first
    assert _order(make_loader(ds, 16, shuffle=False)) == list(range(100))
    dl = make_loader(ds, 16, shuffle=False, drop_last=True)
    assert len(dl) == 6 and dl.num_workers == 0
