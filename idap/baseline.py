"""Stage `baseline`: train the dense model from scratch and save it as an artifact."""

from __future__ import annotations

import time

from .artifact import save_model
from .context import load_data, setup_runtime
from .io import write_json
from .models import create_model, get_spec
from .train import train_ce


def run(
    dataset: str,
    model: str,
    out_model: str,
    out_log: str,
    data: dict,
    train: dict,
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
) -> dict:
    """Train ``model`` on ``dataset`` and write ``out_model`` (.json + .safetensors).

    Args:
        data: the config's ``data`` section.
        train: the config's ``baseline`` section (epochs, lr, momentum, weight_decay).

    Returns:
        The training log (also written to ``out_log`` as JSON).
    """
    dev = setup_runtime(seed, device, threads)
    d = load_data(dataset, data, seed, model)
    info = d.splits.info
    spec = get_spec(model)
    net = create_model(
        model,
        info.num_classes,
        info.in_chans,
        pretrained=train["pretrained"],
        weights_dir=train["weights_dir"],
    ).to(dev)
    t0 = time.perf_counter()
    epochs = train_ce(
        net,
        d.train_loader(),
        train["epochs"],
        train["lr"],
        train["momentum"],
        train["weight_decay"],
        dev,
        desc=f"baseline {model}/{dataset}",
        optimizer=train["optimizer"],
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
        "train": train,
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
