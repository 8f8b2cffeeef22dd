"""Stage `evaluate`: the metrics file of one model (docs/method.md §5)."""

from __future__ import annotations

import time

from idap.core.io import write_json
from idap.core.runtime import setup_runtime
from idap.data import check_model_fits, load_data
from idap.engine.measures import count_macs
from idap.engine.methods import get_method
from idap.engine.sparse import nonzero_macs, param_sparsity
from idap.engine.stats import pack_bits
from idap.engine.train import accuracy, output_deviation, predict
from idap.models import get_spec
from idap.models.artifact import load_model, read_record


def run(
    model_path: str,
    out: str,
    dataset: str,
    settings,
    reference: str | None = None,
    meta: dict | None = None,
    threads: int | None = None,
) -> dict:
    """Evaluate a saved model: test Acc@1/Acc@5, val Acc@1, params, GMACs (dense kernels
    and non-zero weights only), parameter sparsity against the dense model, deviation.

    Args:
        settings: :class:`idap.core.settings.Settings` (reads ``seed``, ``device``, ``data``).
        reference: the dense model; the output deviation ||z0 − z||² / ||z0||² over val is
            measured against it (0 for the dense model itself).
        meta: identifying fields copied into the metrics (model, method, target, ...).
    """
    seed = settings.seed
    dev = setup_runtime(seed, settings.device, threads, settings.precision, settings.channels_last)
    t0 = time.perf_counter()
    arch = read_record(model_path)["arch"]
    d = load_data(dataset, settings.data, seed, get_spec(arch).input_size)
    model, rec = load_model(model_path)
    check_model_fits(rec, d, model_path)
    model.to(dev)
    val_logits, val_y = predict(model, d.val_loader(), dev)
    test_logits, test_y = predict(model, d.test_loader(), dev)
    example = d.example(dev)
    macs, params = count_macs(model, example)
    metrics = dict(meta or {})
    method = metrics.get("method")
    metrics.update(
        dataset=dataset,
        arch=rec["arch"],
        test_acc1=accuracy(test_logits, test_y, 1),
        test_acc5=accuracy(test_logits, test_y, 5),
        val_acc1=accuracy(val_logits, val_y, 1),
        params=params,
        params_m=params / 1e6,
        gmacs=macs / 1e9,
        nz_gmacs=nonzero_macs(model, example, macs) / 1e9,
        family="unstructured"
        if method not in (None, "dense") and get_method(method).sparse
        else "structured",
        macs_convention="MACs per image, batch 1, torch_pruning.utils.count_ops_and_params",
        replaced_blocks=rec.get("replaced", []),
        test_images=len(test_y),
        val_images=len(val_y),
        seed=seed,
    )
    if reference is not None:
        ref, ref_rec = load_model(reference)
        check_model_fits(ref_rec, d, reference)
        ref.to(dev)
        ref_logits, _ = predict(ref, d.val_loader(), dev)
        metrics.update(output_deviation(ref_logits, val_logits))
        metrics["param_sparsity"] = param_sparsity(model, ref)
    else:
        metrics.update(deviation_mean=None, deviation_p95=None, param_sparsity=0.0)
    metrics["wall_s"] = time.perf_counter() - t0
    metrics["compress_wall_s"] = rec.get("wall_s")
    metrics["acc1_before_finetune"] = rec.get("acc1_before_finetune")
    for key in (
        "iterations",
        "budget",
        "images_seen",
        "finetune_iterations",
        "truncation_trials",
        "truncation_iters",
    ):
        metrics[key] = rec.get(key)
    for key in (
        "budget_target",
        "budget_probes",
        "budget_iterations",
        "budget_stop",
        "budget_max_drop",
        "budget_by_delta",
        "budget_wall_s",
    ):
        if key in rec:  # budget mode's search (idap.stages.budget)
            metrics[key] = rec[key]
    # per-image correctness on test (1 bit per image): paired tests between methods
    metrics["test_correct"] = pack_bits((test_logits.argmax(1) == test_y).numpy())
    write_json(out, metrics)
    return metrics
