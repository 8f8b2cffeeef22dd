"""The sparsity report puts structured and unstructured runs on their own axes, pairs each
method with IDAP++ on the same seeds and shows a latency no run measured as missing."""

from __future__ import annotations

import numpy as np
import pytest

from idap.core.io import write_json
from idap.engine.stats import pack_bits, paired_interval
from idap.reporting.format import MISSING
from idap.reporting.sparsity import run, sparsity_table

N_IMAGES = 100
# (method, target) -> test Acc@1 of seeds 0 and 1 (whole images out of N_IMAGES)
ACC = {
    ("idap", 0.5): (90, 92),
    ("idap", 0.8): (80, 84),
    ("magnitude", 0.5): (91, 95),
    ("magnitude", 0.8): (70, 71),
    ("rigl", 0.5): (89, 90),
    ("rigl", 0.8): (75, 79),
}
SPARSITY = {"idap": 0.6, "magnitude": 0.5, "rigl": 0.5}  # at target 0.5; scaled at 0.8


def _ident(method, target, seed):
    return {
        "dataset": "digits",
        "model": "resnet_micro",
        "method": method,
        "target": target,
        "seed": seed,
    }


def _latency(path, ident, backends: dict) -> str:
    rows = [
        {"backend": b, "batch_size": 1, "dtype": "fp32", "latency_ms_median": ms}
        for b, ms in backends.items()
    ]
    write_json(path, {**ident, "results": rows})
    return str(path)


@pytest.fixture
def files(tmp_path):
    metrics, latency, dense_metrics, dense_latency = [], [], [], []
    for (method, target), per_seed in ACC.items():
        for seed, acc in enumerate(per_seed):
            ident = _ident(method, target, seed)
            sparse = method != "idap"
            rec = {
                **ident,
                "test_acc1": float(acc),
                "acc1_before_finetune": acc - 5.0,
                "test_images": N_IMAGES,
                "test_correct": pack_bits(np.arange(N_IMAGES) < acc),
                "gmacs": 0.04 if sparse else 0.04 * (1 - target),
                "nz_gmacs": 0.04 * (1 - target),
                "params_m": 0.1,
                "param_sparsity": SPARSITY[method] * target / 0.5,
            }
            if method != "rigl":  # rigl's family comes from the method registry
                rec["family"] = "unstructured" if sparse else "structured"
            name = f"{method}-r{target}-s{seed}.json"
            write_json(tmp_path / name, rec)
            metrics.append(str(tmp_path / name))
            # only the unstructured runs were timed on the sparse kernel
            backends = {"eager": 1.0 + seed, **({"sparse_csr": 3.0 + seed} if sparse else {})}
            latency.append(_latency(tmp_path / f"lat-{name}", ident, backends))
    for seed in (0, 1):
        ident = _ident("dense", None, seed)
        p = tmp_path / f"dense-{seed}.json"
        write_json(p, {**ident, "test_acc1": 95.0, "gmacs": 0.04, "param_sparsity": 0.0})
        dense_metrics.append(str(p))
        dense_latency.append(_latency(tmp_path / f"lat-dense-{seed}.json", ident, {"eager": 2.0}))
    return metrics, latency, dense_metrics, dense_latency


def test_rows_carry_each_familys_axis(files):
    metrics, latency, dense_metrics, dense_latency = files
    df = sparsity_table(metrics, latency, "eager", dense_metrics, dense_latency)
    rows = list(df[["Method", "Family", "Target"]].itertuples(index=False, name=None))
    assert rows == [
        ("dense", "—", "—"),
        ("IDAP++", "structured", "−50% MACs"),
        ("Global magnitude (unstructured)", "unstructured", "50% sparsity"),
        ("RigL", "unstructured", "50% sparsity"),
        ("IDAP++", "structured", "−80% MACs"),
        ("Global magnitude (unstructured)", "unstructured", "80% sparsity"),
        ("RigL", "unstructured", "80% sparsity"),
    ]
    assert (df["Seeds"] == 2).all()
    notes = " ".join(df.attrs["conventions"])
    assert "−x% MACs" in notes and "x% sparsity" in notes and "sparse_csr" in notes


def test_paired_difference_to_idap_at_the_same_nominal_target(files):
    metrics, latency, *_ = files
    df = sparsity_table(metrics, latency).set_index(["Method", "Target"])
    mag = df.loc[("Global magnitude (unstructured)", "50% sparsity")]
    mean, low, high = paired_interval([91 - 90, 95 - 92])
    assert mean == pytest.approx(2.0)
    assert mag["Δ vs IDAP++"] == f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
    assert mag["McNemar p<0.05"] == "0/2"  # one or three discordant images: never significant
    assert mag["Param sparsity (%)"] == "50.00 ± 0.00"
    assert mag["Acc@1"] == "93.00 ± 2.83"
    assert df.loc[("IDAP++", "−50% MACs"), "Δ vs IDAP++"] == "—"
    # magnitude at 80% sparsity loses 11.5 pp against IDAP++ at −80% MACs on both seeds
    assert df.loc[("Global magnitude (unstructured)", "80% sparsity"), "Δ vs IDAP++"].startswith(
        "-11.50 ["
    )


def test_latency_never_timed_on_the_sparse_kernel_is_missing(files):
    metrics, latency, dense_metrics, dense_latency = files
    df = sparsity_table(metrics, latency, "eager", dense_metrics, dense_latency)
    df = df.set_index(["Method", "Target"])
    idap = df.loc[("IDAP++", "−50% MACs")]
    assert idap["Latency b1 sparse kernel (ms)"] == MISSING
    assert idap["Latency b1 (ms)"] == "1.50 ± 0.707"
    assert df.loc[("RigL", "50% sparsity"), "Latency b1 sparse kernel (ms)"] == "3.50 ± 0.707"
    assert df.loc[("dense", "—"), "Latency b1 sparse kernel (ms)"] == MISSING


def test_run_writes_table_and_plot(files, tmp_path):
    metrics, latency, dense_metrics, dense_latency = files
    out = tmp_path / "out"
    run(dense_metrics=dense_metrics, run_metrics=metrics, dense_latency=dense_latency,
        run_latency=latency, out_sparsity=str(out / "sparsity"),
        out_plot=str(out / "sparsity.png"), latency_backend="eager")  # fmt: skip
    md = (out / "sparsity.md").read_text()
    assert "50% sparsity" in md and "−50% MACs" in md and MISSING in md
    assert (out / "sparsity.csv").stat().st_size > 0
    assert (out / "sparsity.tex").read_text().count("sparsity") > 2
    png = (out / "sparsity.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_the_mac_axis_comparison_leaves_unstructured_runs_to_this_table(files):
    from idap.reporting.compare import comparison_table

    metrics, latency, dense_metrics, dense_latency = files
    table = comparison_table(metrics, latency, "eager", dense_metrics, dense_latency)
    assert set(table["Method"]) == {"idap"}  # magnitude by its metrics, rigl by the registry
