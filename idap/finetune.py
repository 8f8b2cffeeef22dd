"""Stage `finetune`: final fine-tune with distillation from the dense model (METHOD §4)."""

from __future__ import annotations

import time

from .artifact import load_model, read_record, save_model
from .context import check_model_fits, load_data, setup_runtime
from .datasets import dataset_info
from .methods import get_method
from .models import get_spec
from .protocol import Protocol, Timer, dynamics_row, read_dynamics, write_dynamics
from .train import distill_finetune


def run(
    model_path: str,
    dense_path: str,
    dynamics_in: str,
    out_model: str,
    out_dynamics: str,
    dataset: str,
    data: dict,
    prune: dict,
    finetune: dict,
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
    method: str | None = None,
) -> dict:
    """Fine-tune the compressed model with KD from the dense model; log before and after."""
    dev = setup_runtime(seed, device, threads)
    d = load_data(dataset, data, seed, read_record(model_path)["arch"])
    model, rec = load_model(model_path)
    teacher, t_rec = load_model(dense_path)
    check_model_fits(rec, d, model_path)
    check_model_fits(t_rec, d, dense_path)
    model.to(dev)
    teacher.to(dev)
    info = dataset_info(dataset)
    proto = Protocol(
        d, dev, get_spec(rec["arch"]), info.num_classes, info.in_chans, prune, criterion=None
    )
    rows = read_dynamics(dynamics_in)
    timer = Timer()
    t_stage = time.perf_counter()
    before = proto.evaluate(model)
    if method is not None and not get_method(method).finetune:
        finetune = dict(finetune, epochs=0)  # the "no fine-tune" ablation: evaluate only
    if finetune["epochs"] > 0:
        distill_finetune(
            model,
            teacher,
            d.train_loader(),
            finetune["epochs"],
            finetune["optimizer"],
            finetune["lr"],
            finetune["momentum"],
            finetune["weight_decay"],
            finetune["kd_beta"],
            finetune["kd_temperature"],
            dev,
            desc="finetune",
        )
    after = proto.evaluate(model)
    rows.append(
        dynamics_row(
            rows[-1]["step"] + 1,
            "final",
            after,
            timer.lap(),
            rec["dense_val_acc1"],
            prune["max_drop"],
            note=f"{finetune['epochs']} epoch(s) KD fine-tune; "
            f"test Acc@1 before {before['test_acc1']:.2f}",
        )
    )
    wall = time.perf_counter() - t_stage
    record = {k: v for k, v in rec.items() if k not in ("weights", "weights_sha256", "format")}
    record.update(
        stage="finetune",
        wall_s={**rec.get("wall_s", {}), "finetune": wall},
        acc1_before_finetune=before["test_acc1"],
        val_acc1_before_finetune=before["val_acc1"],
    )
    save_model(model.cpu(), out_model, record)
    write_dynamics(out_dynamics, rows)
    return record
