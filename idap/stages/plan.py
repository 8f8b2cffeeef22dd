"""Stage `check_targets`: refuse an unreachable MAC target before the dense model is trained.

How far filter pruning can go depends on the architecture and the per-layer floors alone,
not on the weights: removing every channel above the floors of a freshly initialised model
leaves the same MACs as of a trained one. So the workflow checks every (method, target) of
a model before its dense training starts, on random inputs of the dataset's shape, and a
grid with an impossible target fails in seconds instead of after hours of training.
"""

from __future__ import annotations

import json
import os

from idap.core.config import for_model
from idap.core.io import read_json, write_json
from idap.core.settings import Settings

# The planner imports this module at every invocation: torch is imported only where a
# check actually runs (check_targets), not to find that the record already has every run.
_PROBE_IMAGES = 8


def _probe_data(dataset: str, image_size: int | None, settings):
    """Random images of the dataset's shape: enough for the criteria to score (their scores
    do not matter here, only which channels are removable)."""
    import torch
    from torch.utils.data import TensorDataset

    from idap.data import Data, Splits, dataset_info

    info = dataset_info(dataset)
    size = image_size or info.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(_PROBE_IMAGES, info.in_chans, size, size, generator=g)
    y = torch.arange(_PROBE_IMAGES) % info.num_classes
    ds = TensorDataset(x, y)
    return Data(Splits(ds, ds, ds, info), _PROBE_IMAGES, _PROBE_IMAGES, settings.seed)


FLOOR_KEYS = (
    "mode",
    "target_kind",
    "mac_tolerance",
    "latency_tolerance",
    "min_keep",
    "min_keep_fraction",
    "round_to",
)


def run_key(method: str, target: float, prune: dict) -> list:
    """What decides whether a run is reachable: the method, the target and the ``prune``
    settings (a mapping) behind the floors and the landing band (not, say, the step count)."""
    return [method, float(target), *(prune[k] for k in FLOOR_KEYS)]


def check_targets(dataset: str, model: str, runs, settings, out: str | None = None) -> list[dict]:
    """Check each ``(method, target)`` of ``runs`` for ``model`` on ``dataset``.

    Args:
        settings: the job's :class:`~idap.core.settings.Settings`, or a function of the
            method name returning them (a variant has its own prune settings).
        out: where to write the record: every run checked, with :func:`run_key`, so that a
            later plan checks only runs the record lacks (:func:`unchecked_runs`).

    Returns:
        One row per run: method, target, dense MACs, its key.

    Raises:
        ValueError: every unreachable run named, with the floor-limited reduction.
    """
    from idap.core.runtime import setup_runtime
    from idap.data import dataset_info
    from idap.engine.measures import count_macs
    from idap.models import create_model, get_spec
    from idap.stages.pipeline import check_reachable, make_context
    from idap.stages.state import RunState

    settings_for = settings if callable(settings) else (lambda _m: settings)
    first = settings_for(runs[0][0]) if runs else settings_for(None)
    dev = setup_runtime(first.seed, "cpu")
    spec = get_spec(model)
    info = dataset_info(dataset)
    data = _probe_data(dataset, spec.input_size, first)
    net = create_model(model, info.num_classes, info.in_chans).eval()
    dense = count_macs(net, data.example(dev))[0]
    rows, refused = [], []
    for method, target in runs:
        s = settings_for(method)
        probe = s.replace(prune={"calib_batches": 1, "bn_recalib_batches": 0})
        try:
            ctx = make_context(
                method, float(target), probe, data, dev, spec, info.num_classes, info.in_chans, None
            )
            # a timed target is checked by the job, on the machine that prunes
            if ctx.proto.measure.deterministic:
                state = RunState(net, {"macs": dense, "cost": ctx.proto.cost(net)}, [])
                check_reachable(state, ctx)
            rows.append(
                {
                    "method": method,
                    "target": float(target),
                    "dense_macs": dense,
                    "key": run_key(method, target, s.to_dict()["prune"]),
                }
            )
        except ValueError as e:
            refused.append(str(e))
    if refused:
        raise ValueError(f"{model} on {dataset}: " + "; ".join(refused))
    if out is not None:
        write_json(out, {"dataset": dataset, "model": model, "runs": rows})
    return rows


def unchecked_runs(record: str, runs, prune_for) -> list:
    """The ``(method, target)`` of ``runs`` whose :func:`run_key` the record of an earlier
    check lacks (all of them when there is no record); ``prune_for(method)``: the method's
    ``prune`` section as a mapping."""
    try:
        done = {json.dumps(r["key"]) for r in read_json(record)["runs"] if "key" in r}
    except FileNotFoundError:
        done = set()
    return [(m, t) for m, t in runs if json.dumps(run_key(m, t, prune_for(m))) not in done]


def check_grid_targets(config: dict, dataset: str, model: str, out: str | None = None) -> list:
    """Check the grid's runs of ``model`` on ``dataset``, each method with its own settings
    (the model's overrides and its variant merged). With ``out`` (the check_targets job):
    all of them, and write the record. Without (the planner): only the runs the job's
    record lacks, none when there is no record yet (the job will check them all).

    Returns:
        The runs checked.

    Raises:
        ValueError: every unreachable run named.
    """
    grid = config["grid"]
    runs = [(m, float(t)) for m in grid["methods"] for t in grid["targets"]]
    cache: dict = {}

    def settings_for(method):
        if method not in cache:
            cache[method] = Settings.from_config(config, model, dataset, method=method)
        return cache[method]

    if out is None:
        record = record_path(dataset, model)
        if not os.path.exists(record):
            return []
        runs = unchecked_runs(record, runs, lambda m: for_model(config, model, dataset, m)["prune"])
        if not runs:
            return []
    check_targets(dataset, model, runs, settings_for, out)
    return runs


def record_path(dataset: str, model: str) -> str:
    """Where the workflow's check_targets job writes its record (relative to the workdir)."""
    return f"results/{dataset}/{model}/targets.json"
