"""Stage `latency`: wall-clock inference latency of one model (median and IQR, not a mean).

Protocol (common field practice): eval mode, ``torch.inference_mode()``, an input tensor
allocated once on the device, fixed shapes, cuDNN autotuning on CUDA, warm-up iterations, then
every forward call timed on its own: a pair of CUDA events synchronised after the call on a
GPU, the monotonic clock on a CPU. The statistics therefore describe single inferences, what
one request sees; timing blocks of calls would report the spread of block means, which
averages the per-call jitter away and gives an IQR far narrower than the run-to-run change.
Medians and inter-quartile ranges are reported because latency distributions are skewed by
scheduler and clock noise; the mean and std are kept for completeness.

Before timing, glibc's allocator is told to keep freed memory (``mallopt``): by default it
returns the top of the heap to the kernel whenever a large activation is freed, so every call
page-faults its buffers back in, and how often depends on the process's allocation history.
The same ViT at batch 64 took 8.6 to 11.7 ms per call depending on the process; with the
allocator held steady, 7.9 to 8.6 ms.

On a CPU the default is one intra-op thread (``latency.threads``): on the shared 2-core VM
this project is developed on, two threads switched between two speeds (0.41 and 0.60 ms per
batch-1 call of the same model) from one round or process to the next, one thread did not.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from idap.core.config import load_schema
from idap.core.io import write_json
from idap.models import deploy


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


def _summary(times_s: Iterable[float], batch_size: int, dtype: str, noise_share: float) -> dict:
    t = np.asarray(list(times_s), dtype=np.float64) * 1e3
    q25, med, q75 = np.percentile(t, [25, 50, 75])
    return {
        # the spread is too wide for the median to be read as this model's latency
        "noisy": bool(q75 - q25 > noise_share * med),
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


# The latency protocol's defaults are the config schema's (one place), for the library
# function as for the workflow's jobs.
_DEFAULTS = {
    k: v["default"] for k, v in load_schema()["properties"]["latency"]["properties"].items()
}


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    batch_sizes: Iterable[int] = tuple(_DEFAULTS["batch_sizes"]),
    device: str = _DEFAULTS["device"],
    amp: bool = _DEFAULTS["amp"],
    warmup: int = _DEFAULTS["warmup"],
    min_run_time: float = _DEFAULTS["min_run_time"],
    threads: int | None = None,
    rounds: int = _DEFAULTS["rounds"],
    steady_allocator: bool = True,
    backends: Iterable[str] = tuple(_DEFAULTS["backends"]),
    compiler: str = _DEFAULTS["compiler"],
    noise_share: float = _DEFAULTS["noise_share"],
) -> dict:
    """Time the forward pass of ``model`` for each backend and batch size.

    The model is put in eval mode and moved to ``device`` in place.

    Args:
        model: the network (fp32 parameters).
        input_shape: ``(C, H, W)`` of one image at evaluation resolution.
        batch_sizes: batch sizes to time; batch 1 is latency, larger ones throughput.
        device: "cpu", "cuda" or "auto" (CUDA when available).
        amp: also time under autocast (float16 on CUDA, bfloat16 on CPU); the fp32 rows
            are always measured so the two can be compared.
        warmup: untimed forward passes before each timed setting.
        min_run_time: seconds of timed calls per setting and round (at least one call).
        threads: torch intra-op threads (None keeps the current setting).
        rounds: timed rounds per setting, interleaved across settings; the statistics pool
            every round's calls and each round's median is kept.
        steady_allocator: keep glibc from returning freed memory to the kernel during the
            timing (see the module docstring); changes this process's allocator for good.
        backends: forms of the model to time (``idap.models.deploy.BACKENDS``): each is
            built once, its outputs checked against eager at every batch size, then timed
            in the same interleaved rounds. A backend that fails gives rows with an
            ``error`` instead of figures. AMP rows are timed for eager only.
        compiler: how ``compiled`` is built (``torchscript`` or ``inductor``).
        noise_share: a row whose IQR exceeds this share of its median is marked ``noisy``.

    Returns:
        Flat dict: environment fields (device, device_type, torch, cuda, cudnn, tf32_matmul,
        tf32_cudnn, threads, amp), malloc (allocator settings or None), the protocol
        (input_shape, warmup, min_run_time, rounds), loadavg_1min (before, after) and
        ``results``: one dict per (backend, batch size, dtype) with
        latency_ms_{median,iqr,q25,q75,mean,std}, runs, round_medians_ms and throughput_ips
        (= batch / median), or ``error``; ``backends``: what each backend was built with.

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

    model = model.to(dev).eval()
    backends = list(dict.fromkeys(backends))
    modes: list[tuple[str, torch.dtype | None]] = [("fp32", None)]
    if amp:
        modes.append(
            ("amp-fp16", torch.float16) if dev.type == "cuda" else ("amp-bf16", torch.bfloat16)
        )

    record = _environment(dev, amp)
    record["malloc"] = deploy.steady_allocator() if steady_allocator else None
    record.update(
        input_shape=list(input_shape),
        warmup=int(warmup),
        min_run_time=float(min_run_time),
        rounds=int(rounds),
        noise_share=float(noise_share),
        cpu_count=os.cpu_count(),
    )
    old_benchmark = torch.backends.cudnn.benchmark
    load_before = _loadavg()
    errors: dict[tuple[str, int], str] = {}
    built: dict[str, deploy.Deployed] = {}
    record["backends"] = {}
    try:
        if dev.type == "cuda":
            # fixed shapes, so let cuDNN pick the fastest kernels during warm-up
            torch.backends.cudnn.benchmark = True
        # seeded inputs: the values do not change the timing, but the file stays reproducible
        gen = torch.Generator().manual_seed(0)
        inputs = {b: torch.randn((b, *input_shape), generator=gen).to(dev) for b in batch_sizes}
        native: dict[tuple[str, int], object] = {}
        for name in backends:
            try:
                d = deploy.deploy(
                    name, model, inputs[batch_sizes[0]], threads=threads, compiler=compiler
                )
            except deploy.BackendError as e:
                record["backends"][name] = {"error": str(e)}
                errors.update({(name, b): str(e) for b in batch_sizes})
                continue
            built[name] = d
            record["backends"][name] = d.info
            for b in batch_sizes:  # every timed shape is checked (deploy checked the first)
                try:
                    if b != batch_sizes[0]:
                        deploy.check(d, model, inputs[b])
                    native[(name, b)] = d.to_input(inputs[b])
                except deploy.BackendError as e:
                    errors[(name, b)] = str(e)
        settings = [
            (name, b, label, dtype)
            for name in built
            for b in batch_sizes
            for label, dtype in (modes if name == "eager" else modes[:1])
            if (name, b) not in errors
        ]
        times: dict[tuple, list[list[float]]] = {s[:3]: [] for s in settings}
        # Rounds are interleaved across settings, so a slow spell of the machine lands in
        # every setting's spread (IQR) instead of shifting one setting's median.
        for _ in range(rounds):
            for name, b, label, dtype in settings:
                d = built[name]
                times[(name, b, label)].append(
                    deploy.time_calls(d, native[(name, b)], dev, dtype, warmup, min_run_time)
                )
        del inputs, native
    finally:
        torch.backends.cudnn.benchmark = old_benchmark
    results = []
    for name in backends:
        for b in batch_sizes:
            if (name, b) in errors:
                results.append(
                    {"backend": name, "batch_size": b, "dtype": "fp32", "error": errors[(name, b)]}
                )
                continue
            for label, _ in modes if name == "eager" else modes[:1]:
                per_round = times[(name, b, label)]
                pooled = [t for rt in per_round for t in rt]
                row = {"backend": name, **_summary(pooled, b, label, noise_share)}
                row["round_medians_ms"] = [float(np.median(rt) * 1e3) for rt in per_round]
                results.append(row)
    record["loadavg_1min"] = [load_before, _loadavg()]
    record["results"] = results
    return record


def _loadavg() -> float | None:
    """1-minute load average: a measurement taken while other work ran shows up here."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def write_latency(out_path: str, record: dict) -> None:
    """Write a latency record as JSON, atomically (a killed job leaves no partial file)."""
    write_json(out_path, record)


_SETTING_TYPES = {
    "batch_sizes": list,
    "device": str,
    "amp": bool,
    "warmup": int,
    "min_run_time": float,
    "rounds": int,
    "backends": list,
    "compiler": str,
    "noise_share": float,
}


def run(
    model_path: str,
    out: str,
    settings: dict,
    meta: dict | None = None,
    threads: int | None = None,
    onnx_out: str | None = None,
) -> dict:
    """Measure a saved model artifact and write its latency JSON (what ``idap latency`` calls).

    Args:
        model_path: model artifact (.json record next to its .safetensors weights).
        out: output JSON path.
        onnx_out: also write the model as the ONNX file ONNX Runtime times (BatchNorm
            folded), checked against eager first; the record's ``onnx`` says how it was
            made and how far it is from eager.
        settings: the ``latency`` settings, typed or as a mapping (device, batch_sizes,
            warmup, min_run_time, rounds, amp, threads).
        meta: identifying fields copied into the output (dataset, model, method, target).
        threads: torch intra-op threads when ``settings`` names none (the job's CPUs).

    Returns:
        The record written.
    """
    from idap.engine.measures import count_macs  # heavy imports only for the CLI path
    from idap.models.artifact import load_model

    if dataclasses.is_dataclass(settings):  # typed LatencySettings
        settings = dataclasses.asdict(settings)
    meta = dict(meta or {})
    model, rec = load_model(model_path)
    size = rec.get("input_size")
    if size is None:
        from idap.data import dataset_info

        dataset = meta.get("dataset") or rec.get("dataset")
        if dataset is None:
            raise ValueError(f"{model_path}: no input_size in the record and no dataset in meta")
        size = dataset_info(dataset).image_size
    missing = [k for k in _SETTING_TYPES if k not in settings]
    if missing:  # no silent default: the job's config decides every key
        raise ValueError(f"latency settings lack {', '.join(missing)}")
    given = {k: cast(settings[k]) for k, cast in _SETTING_TYPES.items()}
    shape = (int(rec["in_chans"]), int(size), int(size))
    record = measure_latency(model, shape, threads=settings.get("threads") or threads, **given)
    record["gmacs"] = count_macs(model.cpu(), torch.zeros((1, *shape)))[0] / 1e9
    if onnx_out is not None:
        example = torch.randn((2, *shape), generator=torch.Generator().manual_seed(0))
        record["onnx"] = deploy.export_onnx(model, example, onnx_out)
    record.update(meta)
    write_latency(out, record)
    return record
