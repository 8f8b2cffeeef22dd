"""Loaders over a dataset's splits, and ``Data``: the splits as every stage uses them."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from idap.core import precision
from idap.core.registry import UnknownNameError
from idap.data.registry import DatasetUnavailable, Splits
from idap.data.splits import load_splits
from idap.data.stream import TrainStream
from idap.data.transforms import ImageFiles


def loader_workers(ds) -> int:
    """0 for in-memory data (workers only add fork/IPC cost); for image files up to 8, one
    fewer than the job's threads (the CPUs it was given, not the node's)."""
    if not isinstance(ds, ImageFiles):
        return 0
    return min(8, max(1, torch.get_num_threads() - 1))


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
        num_workers = loader_workers(ds)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=gen,
        persistent_workers=num_workers > 0,
        pin_memory=precision.pin_memory(),
    )


@dataclass
class Data:
    """A dataset's splits and the loaders every stage uses the same way."""

    splits: Splits
    batch_size: int
    eval_batch_size: int
    seed: int

    def train_stream(self, position: int = 0, dense: bool = False) -> TrainStream:
        """The run's one stream of training batches (every phase after the dense model), or
        with ``dense`` the dense training's own (other permutations, same construction)."""
        workers = loader_workers(self.splits.train)
        return TrainStream(
            self.splits.train, self.batch_size, self.seed, position, workers, stream=int(dense)
        )

    def val_loader(self):
        return make_loader(self.splits.val, self.eval_batch_size, shuffle=False)

    def test_loader(self):
        """None where there is no test split (``idap.compress`` without one)."""
        if self.splits.test is None:
            return None
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


def load_data(dataset: str, data, seed: int, image_size: int | None = None) -> Data:
    """Load a prepared dataset's splits as configured by the ``data`` settings, at
    ``image_size`` (a model's own resolution, e.g. the paper grid's; None: the dataset's).

    Raises:
        DatasetUnavailable: not prepared, unreadable (corrupt/truncated files) or empty.
    """
    where = Path(data.root) / dataset
    try:
        splits = load_splits(
            dataset,
            data.root,
            seed=seed,
            val_fraction=data.val_fraction,
            val_max=data.val_max,
            train_subset=data.train_subset,
            test_subset=data.test_subset,
            image_size=image_size,
            augment=data.augment,
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
    return Data(splits, data.batch_size, data.eval_batch_size, seed)


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
