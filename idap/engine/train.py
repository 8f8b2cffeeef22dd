"""Training loops shared by every stage: plain CE training, BN recalibration, recovery
with feature distillation (docs/method.md §2) and the final KD fine-tune (docs/method.md §4)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from idap.core import precision
from idap.core.progress import progress


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
    return progress(total=total, desc=desc)


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


def _train(model, batches, opt, sched, scaler, loss_fn, device, desc, bar) -> tuple[float, int]:
    """One pass of optimiser steps over ``batches`` in the job's precision: (summed loss x
    samples, samples)."""
    loss_sum, n = 0.0, 0
    for x, y in batches:
        x, y = precision.to_device(x, device), y.to(device, non_blocking=True)
        with precision.autocast():
            loss = loss_fn(x, y)
        _check(loss, desc)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        loss_sum += loss.item() * len(y)
        n += len(y)
        bar.update()
    return loss_sum, n


def _batches(source) -> Callable[[int], Iterable]:
    """``take(n)``: the next n batches of a stream (``.take``) or of an iterable."""
    if hasattr(source, "take"):
        return source.take
    it = iter(source)
    return lambda n: itertools.islice(it, n)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def train_steps(
    model: nn.Module,
    batches,
    total: int,
    opt: torch.optim.Optimizer,
    loss_fn: Callable,
    device: torch.device,
    desc: str,
    *,
    chunk: int,
    seed: int = 0,
    evaluate: Callable[[nn.Module], float] | None = None,
    resume: dict | None = None,
    save: Callable[[dict], None] | None = None,
) -> list[dict]:
    """``total`` optimiser steps on ``batches`` (a stream or an iterable) with one cosine
    schedule, in chunks of ``chunk`` steps (an epoch of the stream).

    After each chunk: one log line (loss, val Acc@1 when ``evaluate`` is given, lr, images/s,
    ETA) and ``save(state)`` with everything a resume needs (model, optimiser, schedule,
    scaler, rows). ``resume``: such a state; the loop continues after its last chunk, and
    since each chunk reseeds torch from ``(seed, steps done)`` and a stream is positioned by
    its caller, a resumed run ends with the same weights as an uninterrupted one.

    Returns:
        One row per chunk: epoch, iterations, train_loss, images, lr, images_per_s, wall_s
        (and val_acc1).
    """
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total, 1))
    scaler = precision.grad_scaler()
    rows, done = [], 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["schedule"])
        scaler.load_state_dict(resume["scaler"])
        rows, done = list(resume["rows"]), int(resume["done"])
        print(f"[{desc}] resumed after {done} of {total} iterations", flush=True)
    take = _batches(batches)
    chunk = max(int(chunk), 1)
    epochs = -(-total // chunk)
    precision.prepare(model)
    with _progress(total - done, desc) as bar:
        while done < total:
            n = min(chunk, total - done)
            torch.manual_seed(seed * 1_000_003 + done)  # a resumed chunk draws the same numbers
            lr = opt.param_groups[0]["lr"]
            t0 = time.perf_counter()
            model.train()
            loss_sum, images = _train(
                model, take(n), opt, sched, scaler, loss_fn, device, desc, bar
            )
            wall = time.perf_counter() - t0
            done += n
            row = {
                "epoch": -(-done // chunk),
                "iterations": done,
                "train_loss": loss_sum / max(images, 1),
                "images": images,
                "lr": lr,
                "images_per_s": images / max(wall, 1e-9),
                "wall_s": wall,
            }
            if evaluate is not None:
                row["val_acc1"] = evaluate(model)
            rows.append(row)
            left = (total - done) / max(n, 1) * wall
            val = f"  val Acc@1 {row['val_acc1']:.2f}" if "val_acc1" in row else ""
            print(
                f"[{desc}] epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}{val}  "
                f"lr {lr:.3g}  {row['images_per_s']:.0f} img/s  ETA {_clock(left)}",
                flush=True,
            )
            if save is not None and done < total:
                save(
                    {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "schedule": sched.state_dict(),
                        "scaler": scaler.state_dict(),
                        "rows": rows,
                        "done": done,
                    }
                )
    return rows


def mean_loss(rows: list[dict]) -> float:
    images = sum(r["images"] for r in rows)
    return sum(r["train_loss"] * r["images"] for r in rows) / images if images else float("nan")


def train_ce(
    model: nn.Module,
    batches,
    epochs: int,
    per_epoch: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    device: torch.device,
    desc: str = "train",
    optimizer: str = "sgd",
    **loop,
) -> list[dict]:
    """Cross-entropy training for ``epochs`` epochs of ``per_epoch`` batches with a cosine
    schedule (``loop``: :func:`train_steps`' seed, evaluate, resume, save). One row per epoch."""
    opt = make_optimizer(model.parameters(), optimizer, lr, momentum, weight_decay)
    return train_steps(
        model,
        batches,
        epochs * per_epoch,
        opt,
        lambda x, y: F.cross_entropy(model(x), y),
        device,
        desc,
        chunk=per_epoch,
        **loop,
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
        scaler = precision.grad_scaler()
        precision.prepare(student)
        with _progress(iters, desc) as bar:
            for _ in range(iters):
                x, y = next(it)
                x, y = precision.to_device(x, device), y.to(device, non_blocking=True)
                with precision.autocast():
                    logits = student(x)
                    with torch.no_grad():
                        teacher(x)
                    loss = F.cross_entropy(logits, y)
                    for t in live:
                        s_feat = adapters[t.replace(".", "_")](s_taps.out[t])
                        loss = loss + lam * F.l1_loss(s_feat.float(), t_taps.out[t].float())
                _check(loss, desc)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
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
    batches,
    steps: int,
    optimizer: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    beta: float,
    temperature: float,
    device: torch.device,
    desc: str = "finetune",
    **loop,
) -> float:
    """Final fine-tune: (1−β)·CE + β·T²·KL(teacher/T ‖ student/T) for ``steps`` batches of
    ``batches`` (a stream or an iterable), cosine schedule over them (docs/method.md §4).
    ``loop``: :func:`train_steps`' chunk (default: all steps in one), seed, resume, save.
    Returns the mean loss."""
    if steps <= 0:
        return float("nan")
    opt = make_optimizer(student.parameters(), optimizer, lr, momentum, weight_decay)
    teacher.eval()
    T = temperature

    def loss_fn(x, y):
        logits = student(x)
        with torch.no_grad():
            t_logits = teacher(x)
        kd = F.kl_div(
            F.log_softmax(logits.float() / T, 1),
            F.log_softmax(t_logits.float() / T, 1),
            reduction="batchmean",
            log_target=True,
        )
        return (1 - beta) * F.cross_entropy(logits, y) + beta * T * T * kd

    loop.setdefault("chunk", steps)
    rows = train_steps(student, batches, steps, opt, loss_fn, device, desc, **loop)
    return mean_loss(rows)


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) over a loader, eval mode, on CPU."""
    was = model.training
    model.eval()
    outs, labels = [], []
    precision.prepare(model)
    for x, y in loader:
        with precision.autocast():
            outs.append(model(precision.to_device(x, device)).float().cpu())
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
