"""Stage `check_targets`: refuse an unreachable MAC target before the dense model is trained.

How far filter pruning can go depends on the architecture and the per-layer floors alone,
not on the weights: removing every channel above the floors of a freshly initialised model
leaves the same MACs as of a trained one. So the workflow checks every (method, target) of
a model before its dense training starts, on random inputs of the dataset's shape, and a
grid with an impossible target fails in seconds instead of after hours of training.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from idap.core.io import write_json
from idap.core.runtime import setup_runtime
from idap.data import Data, Splits, dataset_info
from idap.engine.pruning import count_macs
from idap.models import create_model, get_spec
from idap.stages.pipeline import check_reachable, make_context
from idap.stages.state import RunState

_PROBE_IMAGES = 8


def _probe_data(dataset: str, image_size: int | None, settings) -> Data:
    """Random images of the dataset's shape: enough for the criteria to score (their scores
    do not matter here, only which channels are removable)."""
    info = dataset_info(dataset)
    size = image_size or info.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(_PROBE_IMAGES, info.in_chans, size, size, generator=g)
    y = torch.arange(_PROBE_IMAGES) % info.num_classes
    ds = TensorDataset(x, y)
    return Data(Splits(ds, ds, ds, info), _PROBE_IMAGES, _PROBE_IMAGES, settings.seed)


def check_targets(dataset: str, model: str, runs, settings, out: str | None = None) -> list[dict]:
    """Check each ``(method, target)`` of ``runs`` for ``model`` on ``dataset``.

    Returns:
        One row per run: method, target, dense MACs, the least MACs filter pruning reaches.

    Raises:
        ValueError: every unreachable run named, with the floor-limited reduction.
    """
    dev = setup_runtime(settings.seed, "cpu")
    spec = get_spec(model)
    info = dataset_info(dataset)
    data = _probe_data(dataset, spec.input_size, settings)
    settings = settings.replace(prune={"calib_batches": 1, "bn_recalib_batches": 0})
    net = create_model(model, info.num_classes, info.in_chans).eval()
    dense = count_macs(net, data.example(dev))[0]
    rows, refused = [], []
    for method, target in runs:
        ctx = make_context(
            method, float(target), settings, data, dev, spec, info.num_classes, info.in_chans, None
        )
        state = RunState(net, {"macs": dense, "val_acc1": 0.0}, [])
        try:
            check_reachable(state, ctx)
            rows.append({"method": method, "target": float(target), "dense_macs": dense})
        except ValueError as e:
            refused.append(str(e))
    if refused:
        raise ValueError(f"{model} on {dataset}: " + "; ".join(refused))
    if out is not None:
        write_json(out, {"dataset": dataset, "model": model, "runs": rows})
    return rows
