"""Budget mode: the largest reduction whose *final* model stays within max_drop, found by
whole runs (gallop, then bisection), every probe recorded."""

from __future__ import annotations

import re

import pytest
import torch

import idap
from idap.core.settings import Settings
from idap.data import load_data, prepare_dataset
from idap.engine.train import train_ce
from idap.models import create_model
from idap.stages import budget
from idap.stages.state import RunState

DENSE = {"macs": 1_000_000, "cost": 1_000_000, "val_acc1": 90.0}


def _fake_run(drop_per_reduction: float, unreachable_above: float = 1.0, calls=None):
    """A run whose final val drop grows linearly with the reduction."""

    def run_at(r: float) -> RunState:
        if calls is not None:
            calls.append(r)
        if r > unreachable_above:
            raise ValueError(f"cannot reach -{100 * r:.1f}%")
        final = {"val_acc1": DENSE["val_acc1"] - drop_per_reduction * r, "gmacs": (1 - r) / 1e3}
        return RunState(None, dict(DENSE), [final], iterations=100)

    return run_at


def test_search_gallops_then_bisects_to_the_largest_passing_reduction():
    calls = []
    best, tried, stop = budget.search(
        _fake_run(4.0, calls=calls),
        0.9,
        1.0,
        DENSE,
        probes=20,
        start=0.25,
        resolution=0.02,
        unit="MACs",
    )
    # drop = 4 r pp: the answer is r <= 0.25
    assert calls[:2] == [0.225, 0.45]  # first probe, then doubled
    passed = [t.target for t in tried if t.passed]
    failed = [t.target for t in tried if not t.passed]
    assert max(passed) <= 0.25 and min(failed) > 0.25
    assert min(failed) - max(passed) <= 0.02 + 1e-9 and stop.startswith("bracketed")
    assert all(t.drop <= 1.0 for t in tried if t.passed)
    assert all(t.drop > 1.0 for t in tried if not t.passed)
    assert best.rows[-1]["val_acc1"] == pytest.approx(90.0 - 4.0 * max(passed))


def test_search_stops_at_the_cap_and_at_a_passing_upper_bound():
    _, tried, stop = budget.search(_fake_run(4.0), 0.9, 1.0, DENSE, 3, 0.25, 0.001, unit="MACs")
    assert len(tried) == 3 and stop == "compute cap: 3 probes"
    calls = []
    best, tried, stop = budget.search(
        _fake_run(0.5, calls=calls), 0.6, 1.0, DENSE, 8, 0.25, 0.01, unit="MACs"
    )
    assert calls == [0.15, 0.3, 0.6] and stop == "the upper bound -60.0% passes"


def test_an_unreachable_probe_counts_as_failing():
    best, tried, _ = budget.search(
        _fake_run(0.0, unreachable_above=0.5), 0.9, 1.0, DENSE, 12, 0.25, 0.02, unit="MACs"
    )
    assert tried[2].target == 0.9 and tried[2].final is None and not tried[2].passed
    assert 0.48 <= max(t.target for t in tried if t.passed) <= 0.5
    rows = budget.probe_rows(tried, 1.0, 10, "MACs")
    assert [r["step"] for r in rows] == list(range(10, 10 + len(tried)))
    assert "failed (cannot reach -90.0%)" in rows[2]["note"] and rows[2]["flagged"]


def test_several_deltas_share_their_probes_and_each_gets_its_own_answer():
    calls = []
    run_at = budget.Cached(_fake_run(4.0, calls=calls))
    answers = {
        d: budget.search(run_at, 0.9, d, DENSE, 12, 0.25, 0.02, unit="MACs")
        for d in (1.0, 0.5, 2.0)
    }
    assert len(calls) == len(set(calls))  # no reduction was run twice
    consulted = sum(len(tr) for _b, tr, _s in answers.values())
    assert len(calls) < consulted  # the later searches reused the first one's probes
    for d, (_b, tried, stop) in answers.items():  # drop = 4 r pp: each answer is r <= d / 4
        a = budget.answer(tried, stop, DENSE)
        assert a["target"] <= d / 4 < a["target"] + 0.02 + 1e-9 and a["val_drop"] <= d
    runs = run_at.union([tr for _b, tr, _s in answers.values()], 1.0)
    assert sorted(p.target for p in runs) == sorted(calls)
    assert all(p.passed == (p.drop <= 1.0) for p in runs)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare_dataset("digits", str(root))
    return root


def _probe_target(row: dict) -> float:
    """The reduction a probe row ran at, from its note ("probe -37.5% MACs: ...")."""
    return round(float(re.match(r"probe -([0-9.]+)% MACs", row["note"]).group(1)) / 100, 6)


def test_budget_mode_through_the_api_judges_the_final_model(digits):
    cfg = {
        "data": {"root": str(digits), "batch_size": 64, "eval_batch_size": 256},
        "prune": {"steps": 2, "calib_batches": 1, "bn_recalib_batches": 2, "recovery_iters": 4},
        "finetune": {"epochs": 1},
    }
    splits = load_data("digits", Settings.from_config(cfg).data, 0).splits
    torch.manual_seed(0)
    dense = create_model("resnet_micro", 10, 1)
    batches = list(torch.utils.data.DataLoader(splits.train, 64, shuffle=True))
    train_ce(dense, batches * 2, 2, len(batches), 0.05, 0.9, 5e-4, torch.device("cpu"))
    settings = {
        **cfg,
        "prune": {**cfg["prune"], "mode": "budget", "max_drop": 1.0, "budget_probes": 5},
    }
    small, rec = idap.compress(
        dense, splits.train, splits.val, 0.8, method="l1", arch="resnet_micro", settings=settings
    )
    probes = [r for r in rec["rows"] if r["stage"] == "probe"]
    assert len(probes) == rec["budget_probes"] <= 5 and rec["mode"] == "budget"
    drop = rec["dense"]["val_acc1"] - rec["final"]["val_acc1"]
    assert drop <= 1.0 + 1e-9  # judged on the model the user gets
    # at least one probe passed, and the result is the passing probe of largest reduction
    passing = {_probe_target(p): p for p in probes if not p["flagged"]}
    assert passing, [p["note"] for p in probes]
    accepted = max(passing)
    assert rec["budget_target"] == rec["target"] == pytest.approx(accepted)
    chosen = passing[accepted]
    for key, places in (("val_acc1", 4), ("gmacs", 6), ("params_m", 6)):  # no test split
        assert round(rec["final"][key], places) == chosen[key], key  # rows keep these places
    assert all(p["val_drop"] <= 1.0 for p in passing.values())
    failing = [p for p in probes if p["flagged"]]
    assert all(p["val_drop"] > 1.0 for p in failing if p["val_drop"] == p["val_drop"])
    if rec["budget_stop"].startswith("bracketed"):  # the next probe above the answer fails
        assert failing
    else:
        assert rec["budget_stop"] in ("compute cap: 5 probes", "the upper bound -80.0% passes")


def test_budget_table_pairs_each_methods_reduction_with_idaps(tmp_path):
    import json

    from idap.reporting.budget import budget_table

    def write(name, **m):
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps({"dataset": "d", "model": "m", **m}))
        return str(p)

    dense = [write(f"dense{s}", seed=s, gmacs=1.0, test_acc1=90.0) for s in (0, 1)]
    runs = []
    for seed, (r_idap, r_l1) in enumerate([(0.6, 0.5), (0.7, 0.5)]):
        for method, r in (("idap", r_idap), ("l1", r_l1)):
            runs.append(
                write(
                    f"{method}{seed}",
                    seed=seed,
                    method=method,
                    target=0.9,
                    gmacs=1 - r,
                    test_acc1=89.5,
                    budget_max_drop=1.0,
                    budget_target=r,
                    budget_probes=5,
                    budget_iterations=3000,
                    budget_wall_s=300.0 + seed,
                    compress_wall_s={"prune_filters": 20.0},  # the kept run's: not the search
                )
            )
    table = budget_table(runs, [], dense).set_index("Method")
    assert table.loc["idap", "Reduction %"] == "65.00 ± 7.07"
    assert table.loc["l1", "Reduction %"] == "50.00 ± 0.00"
    assert table.loc["l1", "Reduction vs IDAP++ (pp)"].startswith("-15.00 [")
    assert table.loc["idap", "Reduction vs IDAP++ (pp)"] == "reference"
    assert table.loc["l1", "Δ Acc@1 pp"] == "-0.500 ± 0.00"  # 3 significant figures below 1
    assert table.loc["l1", "Search wall (s)"] == "300.50 ± 0.707"


def test_budget_table_has_a_row_per_delta_of_the_search(tmp_path):
    import json

    from idap.reporting.budget import budget_table

    dense = tmp_path / "dense.json"
    dense.write_text(json.dumps({"dataset": "d", "model": "m", "seed": 0, "gmacs": 1.0,
                                 "test_acc1": 90.0}))  # fmt: skip
    run = tmp_path / "l1.json"
    by_delta = {
        "1": {"target": 0.5, "gmacs": 0.5, "test_acc1": 89.5},
        "0.5": {"target": 0.3, "gmacs": 0.7, "test_acc1": 89.8},
        "2": {"target": 0.7, "gmacs": 0.3, "test_acc1": 88.4},
    }
    run.write_text(json.dumps({"dataset": "d", "model": "m", "seed": 0, "method": "l1",
                               "target": 0.9, "gmacs": 0.5, "test_acc1": 89.5,
                               "budget_max_drop": 1.0, "budget_by_delta": by_delta}))  # fmt: skip
    table = budget_table([str(run)], [], [str(dense)])
    assert list(table["Δ pp"]) == [1.0, 0.5, 2.0]
    assert list(table["Reduction %"]) == pytest.approx([50.0, 30.0, 70.0])
    assert list(table["Acc@1"]) == [89.5, 89.8, 88.4]
