"""Run-time setup shared by the stages: seeds, threads, device, data and loaders."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .datasets import DatasetUnavailable, Splits, load_splits, make_loader
from .models import get_spec
from .registry import UnknownNameError


def setup_runtime(seed: int, device: str = "cpu", threads: int | None = None) -> torch.device:
    """Seed every RNG, pin the thread count and pick the device ("auto" prefers CUDA)."""
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be a positive integer, got {threads}")
    if threads:
        torch.set_num_threads(int(threads))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    return torch.device(device)


@dataclass
class Data:
    """A dataset's splits and the loaders every stage uses the same way."""

    splits: Splits
    batch_size: int
    eval_batch_size: int
    seed: int

    def train_loader(self, shuffle: bool = True):
        return make_loader(
            self.splits.train,
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            drop_last=len(self.splits.train) > self.batch_size,
        )

    def val_loader(self):
        return make_loader(self.splits.val, self.eval_batch_size, shuffle=False)

    def test_loader(self):
        return make_loader(self.splits.test, self.eval_batch_size, shuffle=False)

    def calib_batches(self, n: int, device: torch.device) -> list[torch.Tensor]:
        """The first n validation batches (fixed order): calibration never sees test data."""
        loader = make_loader(self.splits.val, self.batch_size, shuffle=False)
        return [x.to(device) for x, _ in itertools.islice(loader, n)]

    def calib_pairs(self, n: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first n validation (x, y) batches, for criteria that need a loss."""
        loader = make_loader(self.splits.val, self.batch_size, shuffle=False)
        return [(x.to(device), y.to(device)) for x, y in itertools.islice(loader, n)]

    def example(self, device: torch.device) -> torch.Tensor:
        return self.splits.val[0][0][None].to(device)  # works for lazy on-disk splits too


def load_data(dataset: str, data: dict, seed: int, model: str | None = None) -> Data:
    """Load a prepared dataset's splits as configured in the ``data`` config section, at
    ``model``'s input resolution when its registry entry fixes one (the paper grid's).

    Raises:
        DatasetUnavailable: not prepared, unreadable (corrupt/truncated files) or empty.
    """
    where = Path(data["root"]) / dataset
    try:
        splits = load_splits(
            dataset,
            data["root"],
            seed=seed,
            val_fraction=data["val_fraction"],
            val_max=data["val_max"],
            train_subset=data.get("train_subset"),
            test_subset=data.get("test_subset"),
            image_size=get_spec(model).input_size if model else None,
        )
    except (DatasetUnavailable, UnknownNameError):
        raise
    except Exception as e:  # corrupt manifest or data files fail in many library-specific ways
        first = (str(e).strip().splitlines() or [""])[0]
        raise DatasetUnavailable(
            f"dataset {dataset!r} under {where} is unreadable ({type(e).__name__}: {first}); "
            f"delete it and rerun the download stage"
        ) from e
    sizes = {k: len(getattr(splits, k)) for k in ("train", "val", "test")}
    if not all(sizes.values()):
        raise DatasetUnavailable(
            f"dataset {dataset!r} under {where} is empty "
            f"({', '.join(f'{k} {n}' for k, n in sizes.items())} images); "
            f"delete it and rerun the download stage"
        )
    return Data(splits, data["batch_size"], data["eval_batch_size"], seed)


def check_model_fits(rec: dict, d: Data, path) -> None:
    """Refuse a model whose input shape or class count differs from the dataset's.

    Raises:
        ValueError: one line naming the model's and the data's shapes.
    """
    c, s = rec.get("in_chans"), rec.get("input_size")
    shape = tuple(d.splits.val[0][0].shape)
    info = d.splits.info
    want = f"{c}x{s}x{s}" if s else f"{c}-channel"
    if c != shape[0] or (s and (s, s) != shape[1:]) or rec.get("num_classes") != info.num_classes:
        raise ValueError(
            f"model {path} expects {want} inputs ({rec.get('num_classes')} classes) but dataset "
            f"{info.name!r} has {'x'.join(map(str, shape))} images ({info.num_classes} classes)"
        )
