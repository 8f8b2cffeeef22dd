"""One seeded stream of training batches per run.

Every training phase after the dense model (BN recalibration, recoveries, truncation
trials, gap steps, the final fine-tune) draws its batches from the same stream, so a run
never replays a batch while unseen ones remain, and every method of a comparison sees the
same images in the same order. Epoch ``e`` is a permutation drawn from a generator seeded
with ``(seed, e)``; a stream is fully described by its position (batches drawn so far), so a
job in a new process, or a resumed one, continues exactly where the last one stopped.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from idap.core import precision

_EPOCH_SEED = 1_000_003
_STREAM = 1 << 40  # keeps the dense training's permutations apart from the run's


class TrainStream:
    """Batches of ``batch_size`` from ``dataset`` (the last incomplete batch of an epoch is
    dropped when the set holds more than one batch), continuing from ``position``."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        position: int = 0,
        num_workers: int = 0,
        stream: int = 0,
    ):
        self.dataset, self.batch_size, self.seed = dataset, int(batch_size), int(seed)
        self.stream = int(stream)  # 0: the run's stream after the dense model; 1: dense training
        self.position = int(position)
        self.num_workers = num_workers
        n = len(dataset)
        self.size = n
        self.per_epoch = max(n // self.batch_size, 1)
        self._order: tuple[int, torch.Tensor] | None = None

    def _epoch(self, e: int) -> torch.Tensor:
        if self._order is None or self._order[0] != e:
            g = torch.Generator().manual_seed(self.seed * _EPOCH_SEED + e + self.stream * _STREAM)
            self._order = (e, torch.randperm(self.size, generator=g))
        return self._order[1]

    def index_batches(self, start: int, count: int) -> list[list[int]]:
        """Dataset indices of batches ``start .. start + count - 1`` of the stream."""
        out = []
        for b in range(start, start + count):
            e, i = divmod(b, self.per_epoch)
            order = self._epoch(e)
            out.append(order[i * self.batch_size : (i + 1) * self.batch_size].tolist())
        return out

    def take(self, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The next ``count`` batches; the position advances by ``count`` at once (a phase
        asks for what it uses)."""
        if count <= 0:
            return iter(())
        batches = self.index_batches(self.position, count)
        self.position += count
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=precision.pin_memory(),
        )
        return iter(loader)

    def distinct_images(self, batches: int | None = None) -> int:
        """Distinct images served by the first ``batches`` batches (default: so far)."""
        b = self.position if batches is None else batches
        if b <= self.per_epoch:  # one permutation: every image at most once
            return b * min(self.batch_size, self.size)
        seen = torch.zeros(self.size, dtype=torch.bool)
        for e in range(-(-b // self.per_epoch)):
            k = min(b - e * self.per_epoch, self.per_epoch)
            seen[self._epoch(e)[: k * self.batch_size]] = True
        return int(seen.sum())


class LoaderStream:
    """A user's DataLoader as a stream: its epochs one after another, never restarted."""

    def __init__(self, loader, position: int = 0):
        self.loader, self.position = loader, 0
        self._it: Iterator | None = None
        self.per_epoch = len(loader)
        self.batch_size = getattr(loader, "batch_size", None) or 1
        self.size = len(getattr(loader, "dataset", ())) or self.per_epoch * self.batch_size
        if position:
            raise ValueError("a DataLoader stream cannot resume at a position")

    def _next(self):
        if self._it is None:
            self._it = iter(self.loader)
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            return next(self._it)

    def take(self, count: int) -> Iterator:
        batches = [self._next() for _ in range(max(count, 0))]
        self.position += len(batches)
        return iter(batches)

    def distinct_images(self, batches: int | None = None) -> int:
        b = self.position if batches is None else batches
        return min(self.size, b * self.batch_size)
