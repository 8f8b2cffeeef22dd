"""Run-time setup shared by the stages: seeds, threads, device, data and loaders."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
import torch

from .datasets import Splits, load_splits, make_loader


def setup_runtime(seed: int, device: str = "cpu", threads: int | None = None) -> torch.device:
    """Seed every RNG, pin the thread count and pick the device ("auto" prefers CUDA)."""
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

    def example(self, device: torch.device) -> torch.Tensor:
        return self.splits.val.tensors[0][:1].to(device)


def load_data(dataset: str, data: dict, seed: int) -> Data:
    """Load a prepared dataset's splits as configured in the ``data`` config section."""
    splits = load_splits(
        dataset,
        data["root"],
        seed=seed,
        val_fraction=data["val_fraction"],
        val_max=data["val_max"],
        train_subset=data.get("train_subset"),
        test_subset=data.get("test_subset"),
    )
    return Data(splits, data["batch_size"], data["eval_batch_size"], seed)
