"""Stage `baseline`: train the dense model from scratch and save it as an artifact."""

from __future__ import annotations

import dataclasses
import time

from idap.core.io import write_json
from idap.core.runtime import setup_runtime
from idap.data import load_data
from idap.engine.train import train_ce
from idap.models import create_model, get_spec
from idap.models.artifact import save_model


def run(
    dataset: str,
    model: str,
    out_model: str,
    out_log: str,
    settings,
    threads: int | None = None,
) -> dict:
    """Train ``model`` on ``dataset`` and write ``out_model`` (.json + .safetensors).

    Args:
        settings: :class:`idap.core.settings.Settings` (reads ``seed``, ``device``, ``data``
            and ``baseline``).

    Returns:
        The training log (also written to ``out_log`` as JSON).
    """
    seed, train = settings.seed, settings.baseline
    dev = setup_runtime(seed, settings.device, threads)
    spec = get_spec(model)
    d = load_data(dataset, settings.data, seed, spec.input_size)
    info = d.splits.info
    net = create_model(
        model,
        info.num_classes,
        info.in_chans,
        pretrained=train.pretrained,
        weights_dir=train.weights_dir,
    ).to(dev)
    t0 = time.perf_counter()
    epochs = train_ce(
        net,
        d.train_loader(),
        train.epochs,
        train.lr,
        train.momentum,
        train.weight_decay,
        dev,
        desc=f"baseline {model}/{dataset}",
        optimizer=train.optimizer,
    )
    wall = time.perf_counter() - t0
    record = {
        "arch": spec.name,
        "num_classes": info.num_classes,
        "in_chans": info.in_chans,
        "input_size": spec.input_size or info.image_size,
        "dataset": dataset,
        "stage": "baseline",
        "seed": seed,
        "train": dataclasses.asdict(train),
    }
    save_model(net.cpu(), out_model, record)
    log = {
        "dataset": dataset,
        "model": model,
        "epochs": epochs,
        "wall_s": wall,
        "train_images": len(d.splits.train),
    }
    write_json(out_log, log)
    return log
