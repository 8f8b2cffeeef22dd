"""Method variants (config ``variants``) and the tuning table that chooses among them."""

import json

import pytest
import yaml

from idap.core.config import ConfigError, validate_config
from idap.core.settings import Settings
from idap.engine.methods import METHODS, get_method
from idap.reporting.tuning import run as tuning_run
from idap.reporting.tuning import tuning_table
from idap.stages.grid import check_grid

SHARE = {"method": "idap", "prune": {"stage1_share": 1.0}}
K3 = {"method": "idap", "prune": {"steps": 3, "recovery_iters": 40}}


def _config(**extra):
    cfg = {
        "grid": {"methods": ["idap", "idap_share", "l1"], "seeds": [0]},
        "prune": {"steps": 6, "recovery_iters": 20},
        "report": {"latency_backend": "eager"},
        "latency": {"backends": ["eager"]},
        "variants": {"idap_share": SHARE},
    }
    cfg.update(extra)
    return validate_config(cfg)


def test_a_variant_runs_its_base_method_with_its_own_settings():
    cfg = _config()
    check_grid(cfg)
    m = get_method("idap_share")
    assert m.variant_of == "idap" and m.stages == METHODS.get("idap").stages
    assert m.criterion == "divergence" and m.ablation is None
    assert Settings.from_config(cfg, method="idap_share").prune.stage1_share == 1.0
    # the base and every other method keep the config's value
    assert Settings.from_config(cfg, method="idap").prune.stage1_share == 0.85
    assert Settings.from_config(cfg, method="l1").prune.stage1_share == 0.85


def test_a_variant_merges_over_the_models_overrides():
    cfg = _config(overrides={"resnet_tiny": {"prune": {"stage1_share": 0.5, "alpha": 2.0}}})
    s = Settings.from_config(cfg, model="resnet_tiny", method="idap_share").prune
    assert (s.stage1_share, s.alpha) == (1.0, 2.0)


def test_a_variant_that_trains_more_or_less_is_refused():
    with pytest.raises(ConfigError, match=r"variants\.k3: changes the post-dense training budget"):
        _config(variants={"k3": {"method": "idap", "prune": {"steps": 3}}})
    with pytest.raises(ConfigError, match="finetune.epochs 1 -> 2"):
        _config(variants={"ft": {"method": "idap", "finetune": {"epochs": 2}}})
    _config(variants={"k3": K3})  # 3 x 40 = 6 x 20: the same budget


def test_a_variant_is_checked_against_each_models_budget():
    """Under a per-model override the base trains 3 x 25 on vit_tiny; a variant setting
    3 x 40 matches the global 6 x 20 but trains more than its base there."""
    vit = {"vit_tiny": {"prune": {"steps": 3, "recovery_iters": 25}}}
    grid = {"methods": ["idap", "k3"], "models": ["resnet_tiny", "vit_tiny"], "seeds": [0]}
    with pytest.raises(ConfigError, match=r"variants\.k3: .* and model vit_tiny .* 75 -> 120"):
        _config(variants={"k3": K3}, overrides=vit, grid=grid)
    # an override of a model the grid does not run cannot change any run's budget
    _config(variants={"k3": K3}, overrides=vit, grid={**grid, "models": ["resnet_tiny"]})
    with pytest.raises(ConfigError, match=r"on dataset digits .*finetune.epochs 3 -> 1"):
        _config(
            variants={"ft": {"method": "idap", "finetune": {"epochs": 1}}},
            dataset_overrides={"digits": {"finetune": {"epochs": 3}}},
            grid={"methods": ["idap", "ft"], "datasets": ["digits"], "seeds": [0]},
        )


@pytest.mark.parametrize(
    "variants, needle",
    [
        ({"l1": {"method": "idap"}}, "the name of a registered method"),
        ({"x": {"method": "nope"}}, "unknown method 'nope'"),
        ({"x": SHARE, "y": {"method": "x"}}, "'x' is itself a variant"),
    ],
)
def test_bad_variants_fail_with_the_reason(variants, needle):
    cfg = _config(variants=variants)
    with pytest.raises(ConfigError, match=needle):
        check_grid(cfg)


def test_bad_variant_settings_fail_like_the_sections():
    with pytest.raises(ConfigError, match=r"variants: 'IDAP-x' does not match"):
        _config(variants={"IDAP-x": SHARE})  # not a valid method name in the workflow's paths
    with pytest.raises(ConfigError, match=r"variants\.x: .*stage1_share"):
        _config(variants={"x": {"method": "idap", "prune": {"stage1_share": 2.0}}})
    with pytest.raises(ConfigError, match=r"variants\.x: prune.mode is one per config"):
        _config(variants={"x": {"method": "idap", "prune": {"mode": "budget"}}})


def test_a_tuned_variant_is_refused_on_the_seeds_it_was_chosen_on():
    tuned = {**SHARE, "tuned_on_seeds": [5]}
    check_grid(_config(variants={"idap_share": tuned}))  # grid seed 0: fine
    cfg = _config(variants={"idap_share": tuned})
    cfg["grid"]["seeds"] = [0, 5]
    with pytest.raises(ConfigError, match=r"chosen on seed\(s\) \[5\]"):
        check_grid(cfg)


def test_reference_and_tuning_are_checked_against_the_grid():
    with pytest.raises(ConfigError, match="report.reference: 'vbp_cnn' is not in grid.methods"):
        check_grid(_config(report={"latency_backend": "eager", "reference": "vbp_cnn"}))
    cfg = _config(report={"latency_backend": "eager", "tuning": True})
    cfg["grid"]["methods"] = ["idap", "l1"]
    with pytest.raises(ConfigError, match="nothing to tune"):
        check_grid(cfg)
    cfg["grid"]["methods"] = ["idap_share", "l1"]
    with pytest.raises(ConfigError, match="'idap' has variants in grid.methods but is not there"):
        check_grid(cfg)


def _metrics(tmp_path, rows):
    paths = []
    for i, (method, target, seed, val, test) in enumerate(rows):
        p = tmp_path / f"m{i}.json"
        rec = dict(dataset="d", model="m", method=method, target=target, seed=seed)
        p.write_text(json.dumps({**rec, "val_acc1": val, "test_acc1": test}))
        paths.append(str(p))
    return paths


def test_tuning_chooses_by_validation_and_never_by_test(tmp_path):
    # idap_share leads on val (mean 81 vs 80), idap on test: the choice follows val
    rows = [
        ("idap", 0.5, 5, 82.0, 90.0),
        ("idap", 0.8, 5, 78.0, 88.0),
        ("idap_share", 0.5, 5, 83.0, 70.0),
        ("idap_share", 0.8, 5, 79.0, 70.0),
        ("idap_k3", 0.5, 5, 90.0, 99.0),  # k3 has no -80% run: only -50% would count...
    ]
    variants = {"idap_share": SHARE}
    df, tuned = tuning_table(_metrics(tmp_path, rows), variants, ["idap", "idap_share", "l1"])
    row = df.set_index("Candidate").loc["idap_share"]
    assert row["Mean val Acc@1"] == pytest.approx(81.0) and row["Chosen"] == "←"
    assert row["Δ vs defaults"] == pytest.approx(1.0)
    assert row["Val Acc@1 @80%"] == pytest.approx(79.0)
    assert row["Settings"] == "prune.stage1_share=1.0"
    spec = tuned["idap_tuned"]
    assert spec["method"] == "idap" and spec["prune"] == {"stage1_share": 1.0}
    assert spec["tuned_on_seeds"] == [5] and "idap_share" in spec["label"]
    # ...and with k3 a candidate, only the groups every candidate finished count
    variants["idap_k3"] = K3
    df, _ = tuning_table(_metrics(tmp_path, rows), variants, ["idap", "idap_share", "idap_k3"])
    assert df.set_index("Candidate").loc["idap", "Mean val Acc@1"] == pytest.approx(82.0)
    assert df.set_index("Candidate").loc["idap_k3", "Chosen"] == "←"


def test_tuning_ties_go_to_the_defaults_and_the_file_reloads(tmp_path):
    rows = [("idap", 0.5, 5, 80.0, 1.0), ("idap_share", 0.5, 5, 80.0, 1.0)]
    out, tuned = tmp_path / "tables/tuning.md", tmp_path / "tuning/tuned.yaml"
    tuning_run(
        run_metrics=_metrics(tmp_path, rows),
        out_tuning=str(out.with_suffix("")),  # a table's stem
        out_tuned=str(tuned),
        variants={"idap_share": SHARE},
        methods=["idap", "idap_share"],
    )
    spec = yaml.safe_load(tuned.read_text())["variants"]["idap_tuned"]
    assert spec == {
        "method": "idap",
        "tuned_on_seeds": [5],
        "label": "IDAP++ (tuned: idap)",
    }
    assert out.with_suffix(".csv").exists() and "test split is not read" in out.read_text()
    # the written file is a valid config fragment naming a usable method
    cfg = _config(variants=yaml.safe_load(tuned.read_text())["variants"])
    cfg["grid"]["methods"] = ["idap", "idap_tuned"]
    check_grid(cfg)
    assert Settings.from_config(cfg, method="idap_tuned").prune == Settings.from_config(cfg).prune


def test_tuning_without_a_complete_group_fails_with_the_reason(tmp_path):
    rows = [("idap", 0.5, 5, 80.0, 1.0), ("idap_share", 0.8, 5, 80.0, 1.0)]
    with pytest.raises(ValueError, match="every candidate of 'idap' finished"):
        tuning_table(_metrics(tmp_path, rows), {"idap_share": SHARE}, ["idap", "idap_share"])


def test_the_cli_writes_the_tuning_table_from_a_config(tmp_path, capsys):
    from idap.cli import main

    cfg = tmp_path / "tune.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "grid": {"methods": ["idap", "idap_share"], "seeds": [5]},
                "variants": {"idap_share": SHARE},
                "report": {"tuning": True},
            }
        )
    )
    rows = [("idap", 0.5, 5, 80.0, 1.0), ("idap_share", 0.5, 5, 81.0, 1.0)]
    out, tuned = tmp_path / "tuning.md", tmp_path / "tuned.yaml"
    args = ["tuning", "--config", str(cfg), "--run-metrics", *_metrics(tmp_path, rows)]
    assert main([*args, "--out-tuning", str(out), "--out-tuned", str(tuned)]) == 0
    assert yaml.safe_load(tuned.read_text())["variants"]["idap_tuned"]["prune"] == {
        "stage1_share": 1.0
    }
    # a run of one candidate missing: one line, nothing written
    out2, tuned2 = tmp_path / "t2.md", tmp_path / "t2.yaml"
    args = ["tuning", "--config", str(cfg), "--run-metrics", *_metrics(tmp_path, rows[:1])]
    assert main([*args, "--out-tuning", str(out2), "--out-tuned", str(tuned2)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "every candidate of 'idap' finished" in err[0]
    assert not out2.exists() and not tuned2.exists()


def test_register_method_refuses_bad_methods():
    from idap.engine.methods import Method, register_method

    with pytest.raises(ValueError, match="method 'l1' registered twice"):
        register_method(Method("l1", "l1", "L1 again"))
    with pytest.raises(ValueError, match="'x': stages must be some of prune_filters, trunc"):
        register_method(Method("x", "l1", "X", stages=("finetune",)))
    assert "x" not in METHODS.names()


def test_variants_live_in_their_scope_not_in_the_registered_table():
    from idap.engine.methods import register_variants, use_variants

    with use_variants({"idap_share": SHARE}):
        assert get_method("idap_share").variant_of == "idap"
        assert "idap_share" not in METHODS.names()
    with pytest.raises(KeyError, match="unknown method 'idap_share'"):
        get_method("idap_share")
    register_variants({"a": SHARE})
    register_variants({"b": SHARE})  # a config's variants replace the previous config's
    assert get_method("b") and "a" not in METHODS
