"""Stage `baseline`: train the dense model (or fine-tune a pretrained one) and save it."""

from __future__ import annotations

import dataclasses
import shutil

from idap.core import precision
from idap.core.io import write_json
from idap.core.runtime import setup_runtime
from idap.data import load_data
from idap.engine.train import accuracy, predict, train_ce
from idap.models import create_model, get_spec
from idap.models.artifact import save_model
from idap.stages.checkpoint import StepCheckpoint


def run(
    dataset: str,
    model: str,
    out_model: str,
    out_log: str,
    settings,
    threads: int | None = None,
) -> dict:
    """Train ``model`` on ``dataset`` and write ``out_model`` (.json + .safetensors).

    The dense training draws its own seeded stream of epochs (:class:`TrainStream`), logs one
    line per epoch with the val Acc@1, and saves its state every
    ``baseline.checkpoint_every`` epochs: a job killed by a time limit resumes to the weights
    an uninterrupted run ends with.

    Args:
        settings: :class:`idap.core.settings.Settings` (reads ``seed``, ``device``,
            ``precision``, ``channels_last``, ``data`` and ``baseline``).

    Returns:
        The training log (also written to ``out_log`` as JSON).
    """
    seed, train = settings.seed, settings.baseline
    dev = setup_runtime(seed, settings.device, threads, settings.precision, settings.channels_last)
    spec = get_spec(model)
    d = load_data(dataset, settings.data, seed, spec.input_size)
    info = d.splits.info
    net = create_model(
        model,
        info.num_classes,
        info.in_chans,
        pretrained=train.pretrained,
        weights_dir=train.weights_dir,
        keep_head=train.keep_head,
    ).to(dev)
    stream = d.train_stream(dense=True)
    key = {"dataset": dataset, "model": model, "settings": settings.to_dict()}
    ckpt = StepCheckpoint(out_model, key, {}).training("baseline", train.checkpoint_every)
    resume = ckpt.load()
    if resume is not None:
        stream.position = resume["done"]
    val = d.val_loader()

    def val_acc1(m) -> float:
        return accuracy(*predict(m, val, dev))

    rows = train_ce(
        net,
        stream,
        train.epochs,
        stream.per_epoch,
        train.lr,
        train.momentum,
        train.weight_decay,
        dev,
        desc=f"baseline {model}/{dataset}",
        optimizer=train.optimizer,
        seed=seed,
        evaluate=val_acc1,
        resume=resume,
        save=ckpt.save,
    )
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
        "epochs": rows,
        "wall_s": sum(r["wall_s"] for r in rows),
        "resumed_after_iterations": resume["done"] if resume else 0,
        "train_images": len(d.splits.train),
        "precision": precision.current().describe(),
        "val_acc1": rows[-1]["val_acc1"] if rows else val_acc1(net.to(dev)),
    }
    write_json(out_log, log)
    shutil.rmtree(ckpt.path.parent, ignore_errors=True)
    return log
