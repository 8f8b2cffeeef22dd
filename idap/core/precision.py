"""Mixed precision and memory format of training and evaluation, set once per job.

Like the thread count, the precision is a property of the process a job runs in, configured
by :func:`idap.core.runtime.setup_runtime` from the ``precision`` and ``channels_last``
settings. Training and evaluation forwards run under :func:`autocast`; pruning scores, MAC
counts and BN recalibration stay in fp32 (their numbers decide what is removed).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Precision:
    device_type: str = "cpu"
    dtype: torch.dtype | None = None  # None: fp32, no autocast
    channels_last: bool = False

    def describe(self) -> str:
        amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        return amp + (", channels-last" if self.channels_last else "")


_current = Precision()


def resolve(device: torch.device, precision: str = "auto", channels_last=None) -> Precision:
    """The precision a job on ``device`` runs: ``auto`` is bf16 on a CUDA device that has it
    (else fp16 with a gradient scaler) and fp32 on the CPU; channels-last on CUDA by default."""
    cuda = device.type == "cuda"
    if precision == "auto":
        if not cuda:
            dtype = None
        else:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dtype is torch.float16 and not cuda:
        raise ValueError("precision fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")
    cl = cuda if channels_last is None else bool(channels_last)
    return Precision(device.type, dtype, cl)


def configure(device: torch.device, precision: str = "auto", channels_last=None) -> Precision:
    global _current
    _current = resolve(device, precision, channels_last)
    return _current


def current() -> Precision:
    return _current


def autocast():
    """Autocast context of the job's precision (a no-op in fp32)."""
    p = _current
    if p.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(p.device_type, dtype=p.dtype)


def grad_scaler() -> torch.amp.GradScaler:
    """A loss scaler, active only for fp16 (bf16 has fp32's range)."""
    return torch.amp.GradScaler(_current.device_type, enabled=_current.dtype is torch.float16)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device`` in the job's memory format (asynchronous from pinned memory)."""
    if _current.channels_last and x.ndim == 4:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


def prepare(model: nn.Module) -> nn.Module:
    """The model in the job's memory format (idempotent)."""
    if _current.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def pin_memory() -> bool:
    return _current.device_type == "cuda"
