"""Latency measurement, tables and plots on fabricated pipeline outputs (fast, CPU only)."""

from __future__ import annotations

import csv
import platform
import time

import pandas as pd
import pytest
import torch
from torch import nn

from idap.core.config import validate_config
from idap.core.io import read_json, write_json
from idap.reporting.format import MISSING, write_table
from idap.reporting.plots import plot_dynamics
from idap.reporting.tables import dynamics_table, latency_table, main_table
from idap.stages.latency import measure_latency, write_latency

DYN_COLUMNS = [
    "step",
    "stage",
    "params_m",
    "gmacs",
    "val_acc1",
    "test_acc1",
    "test_acc5",
    "wall_s",
    "val_drop",
    "flagged",
    "note",
]

EAGER = ("eager",)  # measure_latency times the schema's three backends unless told


def _tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def _metrics(
    model="resnet_tiny",
    method="dense",
    target=None,
    acc=90.0,
    gmacs=0.5,
    params=0.2,
    dev=None,
    dataset="cifar10",
) -> dict:
    return {
        "dataset": dataset,
        "model": model,
        "method": method,
        "target": target,
        "seed": 0,
        "test_acc1": acc,
        "test_acc5": 99.0,
        "val_acc1": acc + 0.5,
        "params": int(params * 1e6),
        "params_m": params,
        "gmacs": gmacs,
        "deviation_mean": dev,
        "deviation_p95": None if dev is None else 2 * dev,
        "wall_s": 1.0,
        "acc1_before_finetune": None,
    }


@pytest.fixture
def files(tmp_path):
    dense = tmp_path / "dense.json"
    write_json(dense, _metrics())
    runs = []
    for name, m in [
        (
            "idap",
            _metrics(method="idap", target=0.75, acc=89.25, gmacs=0.125, params=0.05, dev=0.01),
        ),
        ("l1", _metrics(method="l1", target=0.5, acc=88.5, gmacs=0.25, params=0.1, dev=0.02)),
        ("orphan", _metrics(model="resnet_micro", method="l1", target=0.5, acc=80.0)),
    ]:
        write_json(tmp_path / f"{name}.json", m)
        runs.append(str(tmp_path / f"{name}.json"))
    return {"dense": [str(dense)], "runs": runs, "dir": tmp_path}


def _dynamics(path, n_filter: int) -> None:
    rows = [[0, "baseline", 0.2, 0.5, 90.5, 90.0, 99.0, 0.0, 0.0, False, ""]]
    for i in range(1, n_filter + 1):
        rows.append(
            [
                i,
                "filter",
                0.2 - 0.02 * i,
                0.5 - 0.1 * i,
                90.0 - i,
                89.0 - i,
                98.0,
                1.0,
                0.5 + i,
                i > 1,
                "step note" if i == 1 else "",
            ]
        )
    rows.append([n_filter + 1, "truncation", 0.1, 0.2, 87.0, 86.5, 97.0, 1.0, 3.5, True, ""])
    rows.append([n_filter + 2, "final", 0.1, 0.2, 89.0, 88.5, 98.5, 5.0, 1.5, False, ""])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(DYN_COLUMNS)
        w.writerows(rows)


@pytest.fixture
def dyn_runs(tmp_path):
    runs = []
    for method, target, n in [("idap", 0.75, 2), ("l1", 0.5, 1)]:
        p = tmp_path / f"{method}_dynamics.csv"
        _dynamics(p, n)
        runs.append(
            {
                "dataset": "cifar10",
                "model": "resnet_tiny",
                "method": method,
                "target": target,
                "path": str(p),
            }
        )
    return runs


def _latency(path, method, target, medians, device="cpu: test", model="resnet_tiny"):
    results = [
        {
            "batch_size": b,
            "dtype": "fp32",
            "latency_ms_median": med,
            "latency_ms_iqr": med / 10,
            "latency_ms_q25": med * 0.95,
            "latency_ms_q75": med * 1.05,
            "latency_ms_mean": med,
            "latency_ms_std": 0.1,
            "runs": 10,
            "throughput_ips": b / med * 1e3,
        }
        for b, med in medians.items()
    ]
    write_latency(
        path,
        {
            "device": device,
            "device_type": "cpu",
            "results": results,
            "dataset": "cifar10",
            "model": model,
            "method": method,
            "target": target,
        },
    )
    return str(path)


def test_measure_latency_cpu():
    rec = measure_latency(
        _tiny(), (1, 8, 8), batch_sizes=(1, 4), warmup=2, min_run_time=0.05, backends=EAGER
    )
    for key in (
        "device",
        "device_type",
        "torch",
        "cuda",
        "cudnn",
        "tf32_matmul",
        "tf32_cudnn",
        "threads",
        "amp",
        "results",
    ):
        assert key in rec
    assert rec["device_type"] == "cpu" and rec["device"].startswith("cpu: ")
    if platform.libc_ver()[0] == "glibc":  # the allocator is held steady and says so
        assert rec["malloc"] == {"mmap_threshold": 32 * 2**20, "trim_threshold": 2**30}
    assert rec["amp"] is False
    assert [r["batch_size"] for r in rec["results"]] == [1, 4]
    for r in rec["results"]:
        assert r["dtype"] == "fp32" and r["runs"] >= 1
        assert r["latency_ms_median"] > 0
        assert r["latency_ms_q25"] <= r["latency_ms_median"] <= r["latency_ms_q75"]
        assert r["latency_ms_iqr"] == pytest.approx(r["latency_ms_q75"] - r["latency_ms_q25"])
        expected = r["batch_size"] / (r["latency_ms_median"] / 1e3)
        assert r["throughput_ips"] == pytest.approx(expected)


def test_latency_rounds_are_interleaved_and_pooled(monkeypatch):
    import idap.stages.latency as lat

    calls = []

    def fake_calls(model, x, dev, dtype, warmup, min_run_time):
        calls.append(x.shape[0])
        return [0.001 * len(calls)] * 3  # every round slower than the last: a drifting machine

    monkeypatch.setattr(lat.deploy, "time_calls", fake_calls)
    rec = lat.measure_latency(
        _tiny(), (1, 8, 8), batch_sizes=(1, 4), rounds=3, min_run_time=0.01, backends=EAGER
    )
    assert calls == [1, 4, 1, 4, 1, 4]  # round-robin over settings, not one setting at a time
    b1 = rec["results"][0]
    assert b1["round_medians_ms"] == pytest.approx([1.0, 3.0, 5.0])
    assert b1["runs"] == 9 and b1["latency_ms_median"] == pytest.approx(3.0)
    assert b1["latency_ms_iqr"] == pytest.approx(4.0)  # the drift shows up as spread
    assert rec["rounds"] == 3 and len(rec["loadavg_1min"]) == 2
    # an IQR of 4 ms on a 3 ms median is above the default share (0.25): not a result
    assert b1["noisy"] and rec["noise_share"] == 0.25
    calls.clear()
    rec = lat.measure_latency(
        _tiny(),
        (1, 8, 8),
        batch_sizes=(1,),
        rounds=3,
        min_run_time=0.01,
        backends=EAGER,
        noise_share=2.0,
    )
    assert not rec["results"][0]["noisy"]


class _Alternating(nn.Module):
    """Forward calls that alternately take 2 ms and 6 ms: a jittery model."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        time.sleep(0.002 if self.calls % 2 else 0.006)
        return x


def test_latency_spread_is_that_of_single_calls():
    """Block means would hide the 2 ms / 6 ms alternation (every block ~4 ms, IQR ~0)."""
    rec = measure_latency(
        _Alternating(),
        (1, 2, 2),
        batch_sizes=(1,),
        warmup=0,
        min_run_time=0.1,
        rounds=2,
        backends=EAGER,
    )
    r = rec["results"][0]
    assert r["runs"] >= 20
    assert r["latency_ms_q25"] == pytest.approx(2.0, abs=0.5)
    assert r["latency_ms_q75"] == pytest.approx(6.0, abs=0.8)
    assert r["latency_ms_iqr"] > 3.0


def test_latency_threads_setting_is_applied(tmp_path):
    from idap.models import create_model
    from idap.models.artifact import save_model
    from idap.stages import latency

    before = torch.get_num_threads()
    prefix = save_model(
        create_model("resnet_micro", 10, 1),
        tmp_path / "m",
        {"arch": "resnet_micro", "num_classes": 10, "in_chans": 1, "input_size": 8},
    )
    try:
        settings = validate_config(
            {
                "latency": {"batch_sizes": [1], "warmup": 0, "min_run_time": 0.01, "rounds": 1},
                "report": {"latency_backend": "eager"},
            }
        )["latency"]
        settings["backends"] = ["eager"]
        rec = latency.run(str(prefix), str(tmp_path / "a.json"), {**settings, "threads": 1}, {}, 2)
        assert rec["threads"] == 1  # the config's choice wins over the job's CPUs
        rec = latency.run(
            str(prefix), str(tmp_path / "b.json"), {**settings, "threads": None}, {}, 2
        )
        assert rec["threads"] == 2
    finally:
        torch.set_num_threads(before)


def test_measure_latency_amp_rows_cpu():
    rec = measure_latency(
        _tiny(),
        (1, 8, 8),
        batch_sizes=(2,),
        amp=True,
        warmup=1,
        min_run_time=0.02,
        backends=EAGER,
    )
    assert [r["dtype"] for r in rec["results"]] == ["fp32", "amp-bf16"]
    assert not torch.is_autocast_enabled("cpu") and torch.is_grad_enabled()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_measure_latency_cuda_unavailable():
    with pytest.raises(ValueError, match="torch.cuda.is_available\\(\\) is False"):
        measure_latency(_tiny(), (1, 8, 8), device="cuda", warmup=0, min_run_time=0.01)


def test_write_latency_roundtrip(tmp_path):
    p = tmp_path / "sub" / "latency.json"
    write_latency(p, {"device": "cpu: x", "results": []})
    assert read_json(p) == {"device": "cpu: x", "results": []}


def test_main_table_deltas(files):
    df = main_table(files["dense"], files["runs"])
    assert len(df) == 3
    assert list(df.columns[:4]) == ["Model", "Dataset", "Method", "Target"]
    idap, l1, orphan = (df.iloc[i] for i in range(3))
    assert idap["Acc@1 base"] == 90.0 and idap["Acc@1 pruned"] == 89.25
    assert idap["Δ pp"] == -0.75
    assert idap["Δ%"] == 75.0
    assert idap["GMACs base"] == 0.5 and idap["GMACs pruned"] == 0.125
    assert idap["Params base (M)"] == 0.2 and idap["Params pruned (M)"] == 0.05
    assert idap["Dev. mean"] == 0.01 and idap["Dev. p95"] == 0.02
    assert l1["Δ pp"] == -1.5 and l1["Δ%"] == 50.0
    for col in ("Acc@1 base", "Δ pp", "GMACs base", "Δ%", "Params base (M)", "Dev. mean"):
        assert orphan[col] == MISSING
    assert orphan["Acc@1 pruned"] == 80.0


def test_dynamics_table(dyn_runs):
    df = dynamics_table(dyn_runs)
    assert len(df) == 5 + 4  # (baseline + 2 filter + truncation + final) + (... 1 filter ...)
    assert list(df.columns) == [
        "Model",
        "Dataset",
        "Method",
        "Target",
        "Seed",
        "Step",
        "Stage",
        "Params M",
        "GMACs",
        "Acc@1 val",
        "Acc@1 test",
        "Acc@5",
        "Flag",
        "Note",
    ]
    assert df["Stage"].tolist()[:5] == ["baseline", "filter", "filter", "truncation", "final"]
    assert df["Flag"].tolist()[:5] == ["", "", "yes", "yes", ""]
    assert df["Note"].iloc[1] == "step note" and df["Note"].iloc[0] == ""
    assert MISSING not in df.to_numpy()


def test_latency_table_speedup(tmp_path):
    dense = _latency(tmp_path / "d.json", "dense", None, {1: 2.0, 64: 40.0})
    run = _latency(tmp_path / "r.json", "idap", 0.75, {1: 1.0, 64: 10.0})
    other = _latency(tmp_path / "o.json", "idap", 0.75, {1: 1.0}, device="cuda: other")
    df = latency_table([dense], [run, other])
    assert df["Batch"].tolist() == [1, 64, 1]
    assert df["Speed-up"].tolist() == [2.0, 4.0, MISSING]  # no dense timing on that device
    assert df["Base ms (median ± IQR)"].iloc[0] == "2.00 ± 0.200"
    assert df["Pruned ms (median ± IQR)"].iloc[1] == "10.00 ± 1.00"
    # a noisy timing is shown as such, and no speed-up is read off it
    data = read_json(run)
    data["results"][1]["noisy"] = True
    write_json(run, data)
    df = latency_table([dense], [run])
    assert df["Pruned ms (median ± IQR)"].iloc[1] == "noisy (10.00 ± 1.00)"
    assert df["Speed-up"].tolist() == [2.0, "noisy"]
    assert df["Speed-up ÷ MAC reduction"].iloc[1] == "noisy"


def test_write_table_outputs(files, tmp_path):
    df = main_table(files["dense"], files["runs"])
    stem = tmp_path / "out" / "main"
    write_table(df, str(stem))
    md = (tmp_path / "out" / "main.md").read_text()
    assert "Acc@1 base" in md and "GMACs = multiply-accumulates per image" in md
    assert MISSING in md and "nan" not in md.lower()
    assert "-0.75" in md and "75.00" in md and "0.125" in md
    assert md.index("GMACs = ") < md.index("| Model")
    back = pd.read_csv(tmp_path / "out" / "main.csv")
    assert list(back.columns) == list(df.columns) and len(back) == len(df)
    assert float(back["Δ%"].iloc[0]) == 75.0 and float(back["Δ pp"].iloc[1]) == -1.5
    assert back["Acc@1 base"].iloc[2] == MISSING
    tex = (tmp_path / "out" / "main.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "$\\Delta$" in tex
    assert "Acc@1 base" in tex
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes left no temp files


def test_write_table_dynamics_and_latency(dyn_runs, tmp_path):
    write_table(dynamics_table(dyn_runs), str(tmp_path / "dyn"))
    assert len(pd.read_csv(tmp_path / "dyn.csv", keep_default_na=False)) == 9
    dense = _latency(tmp_path / "d.json", "dense", None, {1: 2.0})
    run = _latency(tmp_path / "r.json", "idap", 0.75, {1: 0.5})
    write_table(latency_table([dense], [run]), str(tmp_path / "lat"))
    md = (tmp_path / "lat.md").read_text()
    assert "Speed-up" in md and "4.00" in md and "median ± IQR" in md


def test_plot_dynamics_png(dyn_runs, tmp_path):
    other = dict(dyn_runs[0], model="resnet_micro")
    out = tmp_path / "plots" / "dynamics.png"
    plot_dynamics([*dyn_runs, other], str(out))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_latency_run_on_artifact(tmp_path):
    from idap.models import create_model
    from idap.models.artifact import save_model
    from idap.stages import latency

    net = create_model("resnet_micro", 10, 1)
    prefix = save_model(
        net,
        tmp_path / "m",
        {"arch": "resnet_micro", "num_classes": 10, "in_chans": 1, "input_size": 8},
    )
    out = tmp_path / "latency.json"
    meta = {"dataset": "digits", "model": "resnet_micro", "method": "dense", "target": None}
    given = {"device": "cpu", "batch_sizes": [1], "warmup": 1, "min_run_time": 0.02, "amp": False}
    with pytest.raises(ValueError, match="latency settings lack rounds, backends, compiler"):
        latency.run(str(prefix), str(out), given, meta)  # no silent default for the rest
    settings = validate_config(
        {"latency": {**given, "backends": ["eager"]}, "report": {"latency_backend": "eager"}}
    )["latency"]
    latency.run(str(prefix), str(out), settings, meta)
    rec = read_json(out)
    assert rec["method"] == "dense" and rec["input_shape"] == [1, 8, 8]
    assert rec["results"][0]["latency_ms_median"] > 0


def test_comparison_table_means_over_seeds_and_ranks_per_target(tmp_path):
    from idap.reporting.compare import comparison_table

    acc = {
        ("idap", 0.5): (90.0, 92.0),
        ("l1", 0.5): (91.0, 91.4),
        ("random", 0.5): (80.0, 82.0),
        ("idap", 0.7): (85.0, 87.0),
        ("l1", 0.7): (84.0, 86.0),
        ("random", 0.7): (86.0, 86.0),
    }
    metrics, latency = [], []
    for (method, target), per_seed in acc.items():
        for seed, a in enumerate(per_seed):
            ident = {
                "dataset": "digits",
                "model": "resnet_micro",
                "method": method,
                "target": target,
                "seed": seed,
            }
            m = tmp_path / f"{method}-{target}-{seed}.json"
            write_json(m, {**ident, "test_acc1": a, "gmacs": 0.01, "params_m": 0.1})
            metrics.append(str(m))
            lat = tmp_path / f"lat-{method}-{target}-{seed}.json"
            write_json(
                lat,
                {
                    **ident,
                    "results": [
                        {"batch_size": 1, "dtype": "fp32", "latency_ms_median": 1.0 + seed}
                    ],
                },
            )
            latency.append(str(lat))
    df = comparison_table(metrics, latency).set_index("Method")
    assert df.loc["idap", "Acc@1 @50%"] == "91.00 ± 1.41"
    assert df.loc["idap", "Latency b1 (ms) @50%"] == "1.50 ± 0.707"
    # 50%: l1 91.2 > idap 91.0 > random 81; 70%: idap 86 = random 86 > l1 85 (ties share)
    assert [df.loc[m, "Rank @50%"] for m in ("l1", "idap", "random")] == [1, 2, 3]
    assert [df.loc[m, "Rank @70%"] for m in ("idap", "random", "l1")] == [1, 1, 3]
    assert (df["Seeds"] == 2).all()
    assert df.loc["l1", "Δ vs IDAP++ @50%"].startswith("+0.20 [")  # (+1.0, -0.6) over seeds
    # another reference (a tuned variant): every difference is taken against it instead
    df = comparison_table(metrics, latency, reference="l1").set_index("Method")
    assert df.loc["l1", "Δ vs l1 @50%"] == "—"
    assert df.loc["idap", "Δ vs l1 @50%"].startswith("-0.20 [")
    assert df.loc["random", "Δ vs l1 @70%"].startswith("+1.00 [")  # (86-84, 86-86)


def test_aggregate_seeds_keeps_shared_labels_and_marks_gaps():
    import pandas as pd

    from idap.reporting.format import MISSING, aggregate_seeds

    df = pd.DataFrame(
        {
            "Method": ["l1", "l1"],
            "truncate (s)": ["—", "—"],  # the method has no such stage, in every seed
            "prune (s)": [10.0, 12.0],
            "latency": [1.0, MISSING],
            "other": [MISSING, MISSING],
        }
    )
    row = aggregate_seeds(df, ["Method"]).iloc[0]
    assert row["truncate (s)"] == "—" and row["other"] == MISSING
    assert row["prune (s)"] == "11.00 ± 1.41"
    assert row["latency"].endswith("(1/2 seeds)")
    assert row["Seeds"] == 2


def test_runs_csv_names_each_runs_family(tmp_path):
    # the two families target different axes (MAC reduction vs parameter sparsity): runs.csv
    # says which, from the metrics when they record it, else from the method registry
    from idap.reporting.compare import run

    runs = {
        "idap": {"family": "structured"},
        "l1": {},  # metrics written before the field existed
        "magnitude": {"family": "unstructured"},
        "rigl": {},
        "not_registered": {},  # a plugin's method that is not loaded here
    }
    paths = []
    for method, extra in runs.items():
        m = {**_metrics(method=method, target=0.5, acc=80.0, dataset="digits"), **extra}
        paths.append(str(tmp_path / f"{method}.json"))
        write_json(paths[-1], m)
    dense = tmp_path / "dense.json"
    write_json(dense, _metrics(dataset="digits"))
    out = tmp_path / "tables"
    out.mkdir()
    run(
        dense_metrics=[str(dense)],
        run_metrics=paths,
        dense_latency=[],
        run_latency=[],
        out_comparison=str(out / "c"),
        out_cost=str(out / "cost"),
        out_runs=str(out / "r.csv"),
        latency_backend="eager",
        reference="idap",
    )
    df = pd.read_csv(out / "r.csv")
    assert list(df.columns[:5]) == ["dataset", "model", "seed", "method", "family"]
    assert dict(zip(df["method"], df["family"], strict=True)) == {
        "idap": "structured",
        "l1": "structured",
        "magnitude": "unstructured",
        "rigl": "unstructured",
        "not_registered": MISSING,
    }


def test_ablation_pairs_only_the_variants_at_the_target(tmp_path):
    """Stage 2 alone stops short of the target MACs: its row shows what it reached, never a
    paired difference to the full pipeline (another budget); the variants at the target are
    paired seed by seed; a variant not run is "missing"."""
    from idap.reporting.ablation import NOT_AT_TARGET, ablation_table

    dense, runs = [], []
    for seed in (0, 1):
        ident = {"dataset": "digits", "model": "resnet_micro", "seed": seed}
        d = tmp_path / f"dense-{seed}.json"
        write_json(d, {**ident, "method": "dense", "target": None, "test_acc1": 95.0, "gmacs": 1.0})
        dense.append(str(d))
        for method, acc, gmacs in (
            ("idap", 90.0 + seed, 0.35),
            ("idap_reversed", 91.0 + 2 * seed, 0.35),
            ("idap_stage2", 93.0, 0.46),
        ):
            m = tmp_path / f"{method}-{seed}.json"
            write_json(
                m, {**ident, "method": method, "target": 0.65, "test_acc1": acc, "gmacs": gmacs}
            )
            runs.append(str(m))
    df = ablation_table(dense, runs).set_index("Variant")
    assert df.loc["reversed order (truncation first)", "Δ vs full"].startswith("+1.50 [")
    stage2 = df.loc["stage 2 only (layer truncation)"]
    assert stage2["Δ vs full"] == stage2["McNemar p<0.05"] == NOT_AT_TARGET
    assert stage2["Δ%"] == "54.00 ± 0.00"  # what it reached is shown
    assert df.loc["stage 1 only (filter pruning)", "Δ vs full"] == MISSING
