"""Stage `latency`: wall-clock inference latency of one model (median and IQR, not a mean).

Protocol (common field practice): eval mode, ``torch.inference_mode()``, an input tensor
allocated once on the device, fixed shapes, cuDNN autotuning on CUDA, warm-up iterations, then
``torch.utils.benchmark.Timer.blocked_autorange`` (which synchronises CUDA around each block).
Medians and inter-quartile ranges are reported because latency distributions are skewed by
scheduler and clock noise; the mean and std are kept for completeness.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.utils import benchmark

from .io import write_json


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("latency device 'cuda' requested but torch.cuda.is_available() is False")
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"latency device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    return dev


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _environment(dev: torch.device, amp: bool) -> dict:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu: {_cpu_name()}"
    return {
        "device": name,
        "device_type": dev.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "threads": torch.get_num_threads(),
        "amp": bool(amp),
    }


def _summary(times_s: Iterable[float], batch_size: int, dtype: str) -> dict:
    t = np.asarray(list(times_s), dtype=np.float64) * 1e3
    q25, med, q75 = np.percentile(t, [25, 50, 75])
    return {
        "batch_size": int(batch_size),
        "dtype": dtype,
        "latency_ms_median": float(med),
        "latency_ms_iqr": float(q75 - q25),
        "latency_ms_q25": float(q25),
        "latency_ms_q75": float(q75),
        "latency_ms_mean": float(t.mean()),
        # ddof=1: the runs are a sample of the latency distribution
        "latency_ms_std": float(t.std(ddof=1)) if t.size > 1 else 0.0,
        "runs": int(t.size),
        "throughput_ips": float(batch_size / (med / 1e3)),
    }


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    batch_sizes: Iterable[int] = (1, 64),
    device: str = "cpu",
    amp: bool = False,
    warmup: int = 50,
    min_run_time: float = 1.0,
    threads: int | None = None,
    rounds: int = 5,
) -> dict:
    """Time the forward pass of ``model`` for each batch size.

    The model is put in eval mode and moved to ``device`` in place.

    Args:
        model: the network (fp32 parameters).
        input_shape: ``(C, H, W)`` of one image at evaluation resolution.
        batch_sizes: batch sizes to time; batch 1 is latency, larger ones throughput.
        device: "cpu", "cuda" or "auto" (CUDA when available).
        amp: also time under autocast (float16 on CUDA, bfloat16 on CPU); the fp32 rows
            are always measured so the two can be compared.
        warmup: untimed forward passes before each timed setting.
        min_run_time: seconds of timed runs per setting and round (``blocked_autorange``).
        threads: torch intra-op threads (None keeps the current setting).
        rounds: timed rounds per setting, interleaved across settings; the statistics pool
            every round's blocks and each round's median is kept.

    Returns:
        Flat dict: environment fields (device, device_type, torch, cuda, cudnn, tf32_matmul,
        tf32_cudnn, threads, amp), the protocol (input_shape, warmup, min_run_time, rounds),
        loadavg_1min (before, after) and ``results``: one dict per (batch size, dtype) with
        latency_ms_{median,iqr,q25,q75,mean,std}, runs, round_medians_ms and throughput_ips
        (= batch / median).

    Raises:
        ValueError: CUDA requested but unavailable, or an invalid setting.
    """
    dev = _resolve_device(device)
    batch_sizes = [int(b) for b in batch_sizes]
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes}")
    if warmup < 0 or min_run_time <= 0 or rounds < 1:
        raise ValueError(
            f"need warmup >= 0, min_run_time > 0 and rounds >= 1, got {warmup}, "
            f"{min_run_time}, {rounds}"
        )
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    if threads:
        torch.set_num_threads(int(threads))
    n_threads = torch.get_num_threads()

    model = model.to(dev).eval()
    modes: list[tuple[str, torch.dtype | None]] = [("fp32", None)]
    if amp:
        modes.append(
            ("amp-fp16", torch.float16) if dev.type == "cuda" else ("amp-bf16", torch.bfloat16)
        )

    record = _environment(dev, amp)
    record.update(
        input_shape=list(input_shape),
        warmup=int(warmup),
        min_run_time=float(min_run_time),
        rounds=int(rounds),
        cpu_count=os.cpu_count(),
    )
    old_benchmark = torch.backends.cudnn.benchmark
    settings = [(b, label, dtype) for b in batch_sizes for label, dtype in modes]
    times: dict[tuple[int, str], list[list[float]]] = {(b, lb): [] for b, lb, _ in settings}
    load_before = _loadavg()
    try:
        if dev.type == "cuda":
            # fixed shapes, so let cuDNN pick the fastest kernels during warm-up
            torch.backends.cudnn.benchmark = True
        # seeded inputs: the values do not change the timing, but the file stays reproducible
        gen = torch.Generator().manual_seed(0)
        inputs = {b: torch.randn((b, *input_shape), generator=gen).to(dev) for b in batch_sizes}
        # Rounds are interleaved across settings, so a slow spell of the machine lands in
        # every setting's spread (IQR) instead of shifting one setting's median.
        for _ in range(rounds):
            for b, label, dtype in settings:
                times[(b, label)].append(
                    _time_block(
                        model,
                        inputs[b],
                        dev,
                        dtype,
                        warmup,
                        min_run_time,
                        n_threads,
                    )
                )
        del inputs
    finally:
        torch.backends.cudnn.benchmark = old_benchmark
    results = []
    for b, label, _ in settings:
        per_round = times[(b, label)]
        row = _summary([t for rt in per_round for t in rt], b, label)
        row["round_medians_ms"] = [float(np.median(rt) * 1e3) for rt in per_round]
        results.append(row)
    record["loadavg_1min"] = [load_before, _loadavg()]
    record["results"] = results
    return record


def _time_block(model, x, dev, dtype, warmup: int, min_run_time: float, threads: int):
    """Per-iteration times (s) of one ``blocked_autorange`` after ``warmup`` passes."""
    autocast = (
        torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )
    # grad mode and autocast are thread-local and Timer runs stmt in this thread, so
    # entering them once here keeps their cost out of the timed statement
    with torch.inference_mode(), autocast:
        for _ in range(warmup):
            model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        # num_threads must be explicit: Timer defaults to a single thread
        timer = benchmark.Timer(
            stmt="model(x)", globals={"model": model, "x": x}, num_threads=threads
        )
        return list(timer.blocked_autorange(min_run_time=min_run_time).times)


def _loadavg() -> float | None:
    """1-minute load average: a measurement taken while other work ran shows up here."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def write_latency(out_path: str, record: dict) -> None:
    """Write a latency record as JSON, atomically (a killed job leaves no partial file)."""
    write_json(out_path, record)


def run(
    model_path: str, out: str, settings: dict, meta: dict | None = None, threads: int | None = None
) -> dict:
    """Measure a saved model artifact and write its latency JSON (what ``idap latency`` calls).

    Args:
        model_path: model artifact (.json record next to its .safetensors weights).
        out: output JSON path.
        settings: the ``latency`` config section (device, batch_sizes, warmup, min_run_time,
            rounds, amp).
        meta: identifying fields copied into the output (dataset, model, method, target).
        threads: torch intra-op threads.

    Returns:
        The record written.
    """
    from .artifact import load_model  # heavy import only for the CLI path

    meta = dict(meta or {})
    model, rec = load_model(model_path)
    size = rec.get("input_size")
    if size is None:
        from .datasets import dataset_info

        dataset = meta.get("dataset") or rec.get("dataset")
        if dataset is None:
            raise ValueError(f"{model_path}: no input_size in the record and no dataset in meta")
        size = dataset_info(dataset).image_size
    record = measure_latency(
        model,
        (int(rec["in_chans"]), int(size), int(size)),
        batch_sizes=settings.get("batch_sizes", (1, 64)),
        device=settings.get("device", "cpu"),
        amp=bool(settings.get("amp", False)),
        warmup=int(settings.get("warmup", 50)),
        min_run_time=float(settings.get("min_run_time", 1.0)),
        threads=threads,
        rounds=int(settings.get("rounds", 5)),
    )
    record.update(meta)
    write_latency(out, record)
    return record
