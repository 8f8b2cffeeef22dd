"""A model in the forms people deploy: eager PyTorch, compiled, ONNX Runtime, sparse CSR.

Each backend turns a model into a callable on a fixed example shape, after its outputs are
checked against eager PyTorch on the same input; the latency stage then times the callable.
A backend that cannot run a model raises :class:`BackendError` with one line saying why, so
the latency table shows a row with the reason instead of silently leaving it out.

- ``eager``: the model as it is.
- ``compiled``: BatchNorm folded into the preceding conv (``torch.fx``'s Conv-BN fusion),
  then TorchScript trace, freeze and ``optimize_for_inference`` (the default: seconds to
  build); ``compiler: inductor`` uses ``torch.compile`` instead (minutes on a CPU).
- ``onnxruntime``: exported to ONNX (opset :data:`OPSET`, BatchNorm folded, batch axis
  dynamic) and run by ONNX Runtime's CPU provider, or its CUDA provider on a GPU.
- ``tensorrt``: the same ONNX model through ONNX Runtime's TensorRT provider, where the
  installed onnxruntime has it.
- ``sparse_csr``: BatchNorm folded, then every plain conv (groups 1) and linear layer whose
  weight has zeros multiplies by its weight stored as a ``torch.sparse`` CSR matrix (convs as
  im2col + sparse @ dense): what unstructured sparsity buys on a CPU without a
  sparsity-aware runtime. Channel-pruned models have no zeros and stay dense.
"""

from __future__ import annotations

import contextlib
import copy
import io
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

BACKENDS = ("eager", "compiled", "onnxruntime", "tensorrt", "sparse_csr")
OPSET = 17
# outputs must agree with eager PyTorch within atol + rtol * max|eager output|
ATOL, RTOL = 1e-4, 1e-3


class BackendError(RuntimeError):
    """A backend cannot build, run or reproduce a model; the message is one line."""


@dataclass
class Deployed:
    """A model in one backend: ``run(native_input)`` and the input conversion it needs."""

    backend: str
    run: Callable
    to_input: Callable[[torch.Tensor], object] = lambda x: x
    info: dict = field(default_factory=dict)
    torch_native: bool = True  # runs under torch.inference_mode and autocast


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, bool]:
    """A copy of ``model`` (eval mode) with every conv -> BatchNorm pair folded into the
    conv; (copy, False) when the model cannot be traced by torch.fx (BatchNorm kept)."""
    from torch.fx.experimental.optimization import fuse

    m = copy.deepcopy(model).eval()
    if not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules()):
        return m, True  # nothing to fold (a ViT): keep the module tree as it is
    try:
        return fuse(m), True
    except Exception:  # noqa: BLE001 - untraceable Python control flow: keep it unfused
        return m, False


def _csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return weight.detach().reshape(weight.shape[0], -1).to_sparse_csr()


def _spmm(w_csr: torch.Tensor, bias: torch.Tensor | None, dense: torch.Tensor) -> torch.Tensor:
    """``w_csr @ dense + bias[:, None]``: one sparse kernel call (MKL on CPU, cuSPARSE)."""
    return torch.sparse.mm(w_csr, dense) if bias is None else torch.addmm(bias, w_csr, dense)


class SparseLinear(nn.Module):
    """``nn.Linear`` with a CSR weight: ``(W @ x^T + b)^T``; CSR is only supported as the left
    operand of a matmul, hence the transposes."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.w, self.out_features = _csr(lin.weight), lin.out_features
        self.b = None if lin.bias is None else lin.bias.detach()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _spmm(self.w, self.b, x.reshape(-1, x.shape[-1]).t())
        return y.t().reshape(*x.shape[:-1], self.out_features)


class SparseConv2d(nn.Module):
    """``nn.Conv2d`` (groups 1) as CSR weight ``(out, in*kh*kw)`` @ im2col columns.

    The columns are built as one strided copy in ``(in*kh*kw, N*Ho*Wo)`` order, about three
    times faster at batch 64 than ``F.unfold`` plus the transpose that one matmul for the
    whole batch needs; this copy, not the matmul, is most of the layer's time. The output
    is a ``(N, out, Ho, Wo)`` view of the ``(out, N, Ho, Wo)`` product (no copy back).
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.w, self.out_channels = _csr(conv.weight), conv.out_channels
        self.b = None if conv.bias is None else conv.bias.detach()[:, None]
        self.kernel, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.pads = tuple(conv._reversed_padding_repeated_twice)  # F.pad order, also "same"
        self.mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pads):
            x = F.pad(x, self.pads, mode=self.mode)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        n, c, h, w = x.shape
        ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
        s_n, s_c, s_h, s_w = x.stride()
        cols = x.as_strided(
            (c, kh, kw, n, ho, wo),
            (s_c, dh * s_h, dw * s_w, s_n, sh * s_h, sw * s_w),
            x.storage_offset(),
        ).reshape(c * kh * kw, n * ho * wo)
        y = _spmm(self.w, self.b, cols)
        return y.view(self.out_channels, n, ho, wo).transpose(0, 1)


def sparsify_kernels(model: nn.Module) -> dict:
    """Swap, in place, every plain ``nn.Conv2d`` (groups 1) and ``nn.Linear`` whose weight
    has zeros for its CSR form; returns the counts and the sparse layers' weight density.

    Exact types only: subclasses (``MultiheadAttention``'s ``out_proj``) may be used by
    their parents through ``.weight`` rather than called.
    """
    swaps, dense, nnz, numel = [], 0, 0, 0
    for name, m in model.named_modules():
        if type(m) not in (nn.Conv2d, nn.Linear):
            continue
        if (type(m) is nn.Conv2d and m.groups != 1) or bool((m.weight != 0).all()):
            dense += 1
            continue
        swaps.append((name, SparseConv2d(m) if type(m) is nn.Conv2d else SparseLinear(m)))
        nnz, numel = nnz + int(swaps[-1][1].w.values().numel()), numel + m.weight.numel()
    for name, new in swaps:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, new)
    return {
        "sparse_layers": len(swaps),
        "dense_layers": dense,
        "density": nnz / numel if numel else 1.0,
        "kernel": "torch.sparse CSR (im2col + spmm for conv)",
    }


def _onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    try:
        torch.onnx.export(
            model,
            (example,),
            buf,
            opset_version=OPSET,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    except Exception as e:  # noqa: BLE001 - exporters fail in many library-specific ways
        raise BackendError(f"ONNX export failed ({type(e).__name__}: {_first_line(e)})") from e
    return buf.getvalue()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _ort_session(model: nn.Module, example: torch.Tensor, providers: list, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendError("onnxruntime is not installed (pip install onnxruntime)") from e
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(
            _onnx_bytes(model, example), sess_options=opts, providers=providers
        )
    except BackendError:
        raise
    except Exception as e:  # noqa: BLE001
        raise BackendError(f"ONNX Runtime cannot load the model ({_first_line(e)})") from e


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def steady_allocator() -> dict | None:
    """Make glibc keep freed memory instead of handing it back to the kernel after each call.

    Process-wide and permanent for this process (more resident memory, no page faults in
    the timed calls). Returns the settings applied, or None where the C library is not glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return None
    import ctypes

    libc = ctypes.CDLL(None)
    # 32 MiB is glibc's largest mmap threshold; bigger blocks are mmapped in any case
    settings = {"mmap_threshold": 32 * 2**20, "trim_threshold": 2**30}
    ok = libc.mallopt(_M_MMAP_THRESHOLD, settings["mmap_threshold"]) == 1
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, settings["trim_threshold"]) == 1
    return settings if ok else None


@contextlib.contextmanager
def intra_op_threads(threads: int | None):
    """torch's intra-op threads set to ``threads`` (None: left as they are) for the block."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def deploy(
    backend: str,
    model: nn.Module,
    example: torch.Tensor,
    *,
    threads: int | None = None,
    compiler: str = "torchscript",
) -> Deployed:
    """``model`` (eval mode, on ``example``'s device) as ``backend`` runs it, its outputs
    checked against eager on ``example``.

    Raises:
        BackendError: the backend is unavailable, fails, or disagrees with eager.
        ValueError: an unknown backend or compiler.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown latency backend {backend!r}; valid: {', '.join(BACKENDS)}")
    model = model.eval()
    dev = example.device
    if backend == "eager":
        return Deployed("eager", model)
    folded, fused = fold_batchnorm(model)
    info = {"batchnorm_folded": fused}
    if backend == "compiled":
        if compiler == "torchscript":
            try:
                with torch.inference_mode(False), torch.no_grad():
                    traced = torch.jit.trace(folded, example, check_trace=False)
                    run = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            except Exception as e:  # noqa: BLE001
                raise BackendError(f"TorchScript failed ({_first_line(e)})") from e
            info["compiler"] = "torchscript freeze + optimize_for_inference"
        elif compiler == "inductor":
            run = torch.compile(folded)
            info["compiler"] = "torch.compile (inductor)"
        else:
            raise ValueError(f"latency.compiler must be torchscript or inductor, got {compiler!r}")
        deployed = Deployed("compiled", run, info=info)
    elif backend == "sparse_csr":
        try:
            info.update(sparsify_kernels(folded))
        except Exception as e:  # noqa: BLE001 - a torch without CSR support on this device
            raise BackendError(f"sparse_csr: cannot build CSR weights ({_first_line(e)})") from e
        deployed = Deployed("sparse_csr", folded, info=info)
    else:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if backend == "tensorrt":
            if "TensorrtExecutionProvider" not in available:
                raise BackendError(
                    "TensorRT: this onnxruntime has no TensorrtExecutionProvider "
                    f"(providers: {', '.join(available)})"
                )
            providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
        elif dev.type == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise BackendError("ONNX Runtime has no CUDAExecutionProvider here")
            providers = ["CUDAExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        sess = _ort_session(folded.cpu(), example.cpu(), providers, threads)
        folded.to(dev)
        info.update(opset=OPSET, providers=sess.get_providers(), onnxruntime=ort.__version__)

        def run(x):
            return sess.run(None, {"x": x})[0]

        deployed = Deployed(
            backend,
            run,
            to_input=lambda x: x.detach().cpu().numpy(),
            info=info,
            torch_native=False,
        )
    check(deployed, model, example)
    return deployed


@torch.no_grad()
def export_onnx(model: nn.Module, example: torch.Tensor, path) -> dict:
    """Write ``model`` (eval mode, BatchNorm folded) as the ONNX file the ``onnxruntime``
    backend times, after checking it against eager under ONNX Runtime on ``example``.

    Returns:
        What was written: path, opset, bytes, batchnorm_folded, max_abs_diff_vs_eager.

    Raises:
        BackendError: export fails, onnxruntime is missing, or the file disagrees with eager.
    """
    from idap.core.io import atomic_path

    model = model.eval().cpu()
    example = example.cpu()
    folded, fused = fold_batchnorm(model)
    data = _onnx_bytes(folded, example)
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendError("onnxruntime is not installed (pip install onnxruntime)") from e
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    file = Deployed("onnx file", lambda x: sess.run(None, {"x": x.numpy()})[0])
    with torch.inference_mode():
        err = check(file, model, example)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return {
        "path": str(path),
        "opset": OPSET,
        "bytes": len(data),
        "batchnorm_folded": fused,
        "max_abs_diff_vs_eager": err,
    }


def check(deployed: Deployed, model: nn.Module, example: torch.Tensor) -> float:
    """Largest absolute difference to eager on ``example``; raises when out of tolerance."""
    ref = model(example).float().cpu()
    try:
        with torch.inference_mode():
            out = deployed.run(deployed.to_input(example))
    except Exception as e:  # noqa: BLE001
        raise BackendError(f"{deployed.backend} failed to run ({_first_line(e)})") from e
    out = torch.as_tensor(out).float().cpu()
    if out.shape != ref.shape:
        raise BackendError(f"{deployed.backend} output shape {tuple(out.shape)} != eager's")
    err = (out - ref).abs().max().item()
    bound = ATOL + RTOL * ref.abs().max().item()
    deployed.info["max_abs_diff_vs_eager"] = err
    if not err <= bound:
        raise BackendError(
            f"{deployed.backend} disagrees with eager: max |diff| {err:.2e} > {bound:.2e}"
        )
    return err


def time_calls(deployed, x, dev, dtype, warmup: int, min_run_time: float) -> list[float]:
    """Seconds per forward call of ``deployed`` on ``x`` (its native input), each call timed
    alone, for at least ``min_run_time`` s after ``warmup`` untimed calls; under autocast to
    ``dtype`` unless None. On CUDA a call's time includes waiting for its result."""
    model = deployed.run
    autocast = (
        torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )
    cuda = dev.type == "cuda"
    times: list[float] = []
    # grad mode and autocast are thread-local: entering them once keeps their cost out of
    # the timed calls
    with torch.inference_mode(), autocast:
        for _ in range(warmup):
            model(x)
        if cuda:
            torch.cuda.synchronize(dev)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
        deadline = time.perf_counter() + min_run_time
        while True:
            if cuda:
                start.record()
                model(x)
                end.record()
                end.synchronize()  # a request's latency includes waiting for its result
                times.append(start.elapsed_time(end) / 1e3)
                now = time.perf_counter()
            else:
                t0 = time.perf_counter()
                model(x)
                now = time.perf_counter()
                times.append(now - t0)
            if now >= deadline:
                return times
