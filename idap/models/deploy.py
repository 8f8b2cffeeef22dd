"""A model in the forms people deploy: eager PyTorch, compiled, and ONNX Runtime.

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
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

BACKENDS = ("eager", "compiled", "onnxruntime", "tensorrt")
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
