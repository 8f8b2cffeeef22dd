"""Process set-up shared by every stage: seeds, thread count and device."""

from __future__ import annotations

import random

import numpy as np
import torch

from idap.core.precision import configure


def setup_runtime(
    seed: int,
    device: str = "cpu",
    threads: int | None = None,
    precision: str = "auto",
    channels_last: bool | None = None,
) -> torch.device:
    """Seed every RNG, pin the thread count, pick the device ("auto" prefers CUDA) and set
    the job's precision and memory format (:mod:`idap.core.precision`)."""
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
    dev = torch.device(device)
    configure(dev, precision, channels_last)
    return dev
