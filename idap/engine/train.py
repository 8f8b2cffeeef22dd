"""Training loops shared by every stage: plain CE training, BN recalibration, recovery
with feature distillation (docs/method.md §2) and the final KD fine-tune (docs/method.md §4)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


class NonFiniteLossError(RuntimeError):
    """Training diverged; raised instead of writing a NaN model."""


def _check(loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"non-finite loss ({loss.item()}) during {where}; lower the lr")


def cycle(loader: Iterable) -> Iterator:
    """Endless iteration over a loader (reshuffles every pass)."""
    while True:
        yield from loader


def _progress(total: int, desc: str):
    return tqdm(total=total, desc=desc, leave=False, mininterval=2.0, dynamic_ncols=True)


def make_optimizer(
    params, optimizer: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (CNNs) or AdamW (transformers)."""
    if optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True
        )
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")


def _train(model, batches, opt, sched, loss_fn, device, desc, bar) -> tuple[float, int]:
    """One pass of optimiser steps over ``batches``: (summed loss x samples, samples)."""
    loss_sum, n = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        loss = loss_fn(x, y)
        _check(loss, desc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.item() * len(y)
        n += len(y)
        bar.update()
    return loss_sum, n


def _epochs(model, loader, epochs, opt, loss_fn, device, desc) -> list[dict]:
    """The epoch loop of the dense training: cosine schedule, one log row per epoch."""
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total, 1))
    log = []
    model.train()
    with _progress(total, desc) as bar:
        for epoch in range(epochs):
            loss_sum, n = _train(model, loader, opt, sched, loss_fn, device, desc, bar)
            log.append({"epoch": epoch + 1, "train_loss": loss_sum / max(n, 1)})
    return log


def _steps(model, batches, steps, opt, loss_fn, device, desc) -> float:
    """``steps`` optimiser steps on ``batches`` with a cosine schedule; the mean loss."""
    if steps <= 0:
        return float("nan")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    with _progress(steps, desc) as bar:
        loss_sum, n = _train(
            model, itertools.islice(batches, steps), opt, sched, loss_fn, device, desc, bar
        )
    return loss_sum / max(n, 1)


def train_ce(
    model: nn.Module,
    loader,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    device: torch.device,
    desc: str = "train",
    optimizer: str = "sgd",
) -> list[dict]:
    """Cross-entropy training with a cosine schedule. Returns one log row per epoch."""
    opt = make_optimizer(model.parameters(), optimizer, lr, momentum, weight_decay)
    return _epochs(
        model, loader, epochs, opt, lambda x, y: F.cross_entropy(model(x), y), device, desc
    )


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader, batches: int, device: torch.device) -> None:
    """Re-estimate BN running statistics on the first ``batches`` batches of ``loader`` (train
    mode, no gradient step)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches <= 0:
        return
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the recalibration batches
    was = model.training
    model.train()
    for x, _ in itertools.islice(cycle(loader), batches):
        model(x.to(device))
    model.train(was)
    for m, (mom, _tr) in zip(bns, saved, strict=True):
        m.momentum = mom


class _Taps:
    """Forward hooks collecting the outputs of named modules."""

    def __init__(self, model: nn.Module, names: Iterable[str]):
        self.out: dict[str, torch.Tensor] = {}
        self.handles = []
        for n in names:
            self.handles.append(model.get_submodule(n).register_forward_hook(self._hook(n)))

    def _hook(self, name):
        def hook(_m, _i, o):
            self.out[name] = o

        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def _adapter(c_student: int, c_teacher: int, ndim: int) -> nn.Module:
    if ndim == 4:
        return nn.Conv2d(c_student, c_teacher, 1, bias=False)
    return nn.Linear(c_student, c_teacher, bias=False)


def recover(
    student: nn.Module,
    teacher: nn.Module,
    batches: Iterable,
    iters: int,
    taps: tuple[str, ...],
    lam: float,
    lr: float,
    weight_decay: float,
    device: torch.device,
    desc: str = "recover",
) -> float:
    """Recovery fine-tune: CE + λ·Σ L1(student tap, teacher tap), AdamW (docs/method.md §2).

    ``batches`` yields (at least) ``iters`` training batches; the first also sizes the
    adapters: where widths differ a trainable 1×1 conv (or linear) adapter maps student to
    teacher. Taps that no longer exist in either model (e.g. truncated away) are skipped.

    Returns:
        Mean loss over the iterations.
    """
    if iters <= 0:
        return float("nan")
    live = [t for t in taps if _has(student, t) and _has(teacher, t)]
    s_taps, t_taps = _Taps(student, live), _Taps(teacher, live)
    teacher.eval()
    adapters: nn.ModuleDict | None = None
    total = 0.0
    try:
        student.train()
        it = iter(batches)
        first = next(it)
        it = itertools.chain([first], it)
        x0 = first[0]
        with torch.no_grad():
            student(x0.to(device))
            teacher(x0.to(device))
        adapters = nn.ModuleDict()
        for t in live:
            dim = 1 if s_taps.out[t].ndim == 4 else -1  # channels: NCHW, or (B, tokens, C)
            cs, ct = s_taps.out[t].shape[dim], t_taps.out[t].shape[dim]
            adapters[t.replace(".", "_")] = (
                nn.Identity() if cs == ct else _adapter(cs, ct, s_taps.out[t].ndim)
            )
        adapters.to(device)
        params = list(student.parameters()) + list(adapters.parameters())
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        with _progress(iters, desc) as bar:
            for _ in range(iters):
                x, y = next(it)
                x, y = x.to(device), y.to(device)
                logits = student(x)
                with torch.no_grad():
                    teacher(x)
                loss = F.cross_entropy(logits, y)
                for t in live:
                    s_feat = adapters[t.replace(".", "_")](s_taps.out[t])
                    loss = loss + lam * F.l1_loss(s_feat, t_taps.out[t])
                _check(loss, desc)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item()
                bar.update()
    finally:
        s_taps.close()
        t_taps.close()
    return total / iters


def _has(model: nn.Module, name: str) -> bool:
    try:
        m = model.get_submodule(name)
    except AttributeError:
        return False
    return not isinstance(m, nn.Identity)


def distill_finetune(
    student: nn.Module,
    teacher: nn.Module,
    batches: Iterable,
    steps: int,
    optimizer: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    beta: float,
    temperature: float,
    device: torch.device,
    desc: str = "finetune",
) -> float:
    """Final fine-tune: (1−β)·CE + β·T²·KL(teacher/T ‖ student/T) for ``steps`` batches of
    ``batches``, cosine schedule over them (docs/method.md §4). Returns the mean loss."""
    opt = make_optimizer(student.parameters(), optimizer, lr, momentum, weight_decay)
    teacher.eval()
    T = temperature

    def loss_fn(x, y):
        logits = student(x)
        with torch.no_grad():
            t_logits = teacher(x)
        kd = F.kl_div(
            F.log_softmax(logits / T, 1),
            F.log_softmax(t_logits / T, 1),
            reduction="batchmean",
            log_target=True,
        )
        return (1 - beta) * F.cross_entropy(logits, y) + beta * T * T * kd

    return _steps(student, batches, steps, opt, loss_fn, device, desc)


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) over a loader, eval mode, on CPU."""
    was = model.training
    model.eval()
    outs, labels = [], []
    for x, y in loader:
        outs.append(model(x.to(device)).float().cpu())
        labels.append(y)
    model.train(was)
    return torch.cat(outs), torch.cat(labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor, topk: int = 1) -> float:
    """Top-k accuracy in percent."""
    k = min(topk, logits.shape[1])
    hit = logits.topk(k, dim=1).indices.eq(labels[:, None]).any(dim=1)
    return 100.0 * hit.float().mean().item()


def output_deviation(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    """Mean and p95 of ||logits0 − logits||² / ||logits0||² (the paper's
    bound, docs/method.md §5)."""
    r = (ref - out).pow(2).sum(1) / ref.pow(2).sum(1).clamp_min(1e-12)
    return {"deviation_mean": r.mean().item(), "deviation_p95": torch.quantile(r, 0.95).item()}
