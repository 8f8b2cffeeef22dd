"""docs/method.md §3 variant ``truncate.replace: projection``: a shape-changing block is
replaced by a 1x1 conv fitted by least squares on val activations; it is ranked, truncated,
checkpointed, saved and rebuilt without pickle like any identity replacement."""

import json

import pytest
import torch
from helpers import run_stage
from torch import nn

from idap.core.config import validate_config
from idap.core.settings import Settings
from idap.data import prepare_dataset
from idap.engine.criteria import create_criterion
from idap.engine.measures import count_macs
from idap.engine.projection import fit_projections, projection_divergence, projection_stride
from idap.engine.protocol import read_dynamics
from idap.engine.pruning import (
    build_graph,
    prunable_layers,
    prune_to_macs,
    rank_channels,
)
from idap.models import create_model, get_spec
from idap.models.artifact import ArtifactError, load_model, projection_module, save_model
from idap.stages import baseline
from idap.stages.checkpoint import StepCheckpoint
from idap.stages.truncate_layers import candidates

ALL_BLOCKS = {"layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1"}


def test_projection_stride():
    assert projection_stride((1, 16, 14, 14), (1, 32, 7, 7)) == 2
    assert projection_stride((1, 16, 7, 7), (1, 32, 4, 4)) == 2  # odd size, padded 3x3 s2
    assert projection_stride((1, 16, 8, 8), (1, 24, 8, 8)) == 1  # channels only
    assert projection_stride((1, 16, 4, 4), (1, 16, 8, 8)) is None  # upsampling
    assert projection_stride((1, 5, 16), (1, 5, 8)) is None  # not a feature map


def test_fit_recovers_an_exactly_linear_block():
    block = nn.Conv2d(4, 6, 1, stride=2, bias=True)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), block, nn.Flatten()).eval()
    batches = [torch.randn(5, 3, 9, 9) for _ in range(3)]
    proj, info = fit_projections(model, {"1": 2}, batches, max_positions=64)["1"]
    assert info == {"in": 4, "out": 6, "stride": 2, "relu": False}  # outputs take both signs
    torch.testing.assert_close(proj[0].weight, block.weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(proj[0].bias, block.bias, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        for x in [*batches, torch.randn(2, 3, 11, 11)]:
            h = model[0](x)
            torch.testing.assert_close(proj(h), block(h), atol=1e-5, rtol=1e-5)
    assert projection_divergence(model, batches, {"1": proj})["1"] < 1e-5


def _with_projection(arch: str = "resnet_tiny") -> tuple[nn.Module, dict, list[torch.Tensor]]:
    model = create_model(arch, 10, 1).eval()
    batches = [torch.randn(16, 1, 28, 28) for _ in range(2)]
    proj, info = fit_projections(model, {"layer2.0": 2}, batches)["layer2.0"]
    model.set_submodule("layer2.0", proj)
    return model, info, batches


def test_projection_of_a_downsampling_block_keeps_forward_shape():
    model = create_model("resnet_tiny", 10, 1).eval()
    batches = [torch.randn(16, 1, 28, 28) for _ in range(2)]
    shapes = []
    model.layer2.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    with torch.no_grad():
        model(batches[0])
    proj, info = fit_projections(model, {"layer2.0": 2}, batches)["layer2.0"]
    assert info == {"in": 16, "out": 32, "stride": 2, "relu": True}  # BasicBlock ends in ReLU
    assert isinstance(proj[1], nn.ReLU) and proj[0].stride == (2, 2)
    d = projection_divergence(model, batches, {"layer2.0": proj})["layer2.0"]
    assert 0 <= d < 1  # better than predicting zeros
    model.set_submodule("layer2.0", proj)
    with torch.no_grad():
        y = model(batches[0])
    assert shapes[0] == shapes[1] and y.shape == (16, 10) and torch.isfinite(y).all()


def test_candidates_in_projection_mode():
    model = create_model("resnet_tiny", 10, 1).eval()
    spec, x = get_spec("resnet_tiny"), torch.randn(2, 1, 28, 28)
    assert set(candidates(model, spec, x)) == ALL_BLOCKS - {"layer2.0", "layer3.0"}
    assert set(candidates(model, spec, x, "projection")) == ALL_BLOCKS  # never conv1 or fc
    with pytest.raises(ValueError, match="replace"):
        candidates(model, spec, x, "bogus")
    model.set_submodule("layer2.0", projection_module(16, 32, 2, True))
    left = set(candidates(model, spec, x, "projection"))
    assert left == ALL_BLOCKS - {"layer2.0", "layer2.1"}  # layer2.1: last original block


def _record(**kw) -> dict:
    return {"arch": "resnet_tiny", "num_classes": 10, "in_chans": 1, **kw}


def test_artifact_round_trip_with_a_projected_block(tmp_path):
    model, info, batches = _with_projection()
    model.set_submodule("layer3.1", nn.Identity())
    x = batches[0]
    path = save_model(
        model, tmp_path / "m", _record(replaced=["layer3.1"], projected={"layer2.0": info})
    )
    loaded, rec = load_model(path)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert isinstance(loaded.layer3[1], nn.Identity)
    assert isinstance(loaded.layer2[0], nn.Sequential) and loaded.layer2[0][0].stride == (2, 2)
    assert json.loads(path.read_text())["projected"] == {"layer2.0": info}  # plain JSON
    # a record that keeps only the edits (filter pruning after truncation) rebuilds too
    edit = {"stage": "truncation", "step": 1, "projected": "layer2.0", "projection": info}
    path = save_model(model, tmp_path / "e", _record(replaced=["layer3.1"], edits=[edit]))
    with torch.no_grad():
        assert torch.equal(model(x), load_model(path)[0](x))
    # malformed projection entries are named, not crashed on
    for bad in ({"in": 16}, {**info, "relu": "yes"}, {**info, "stride": 0}):
        path = save_model(model, tmp_path / "b", _record(projected={"layer2.0": bad}))
        with pytest.raises(ArtifactError, match="projection 'layer2.0'"):
            load_model(path)


def test_filter_pruning_after_projection_round_trips(tmp_path):
    model, info, batches = _with_projection()
    x = batches[0]
    DG = build_graph(model, x)
    layers = prunable_layers(model, {"fc"})
    assert "layer2.0.0" in layers  # the projection is an ordinary prunable conv
    crit = create_criterion("divergence")
    crit.prepare(model, [x], DG, layers)
    widths = {n: m.weight.shape[0] for n, m in layers.items()}
    ranked = rank_channels(model, DG, crit, {"fc"}, widths, 8, 0.1)
    pruned, _, _ = prune_to_macs(model, x, ranked, 0.5 * count_macs(model, x)[0])
    pruned.eval()
    path = save_model(pruned, tmp_path / "p", _record(projected={"layer2.0": info}))
    loaded, _ = load_model(path)
    with torch.no_grad():
        assert torch.equal(pruned(x), loaded(x))
    assert loaded.layer2[0][0].out_channels == pruned.layer2[0][0].out_channels < 32


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    wd = tmp_path_factory.mktemp("projection")
    cfg = validate_config(
        {
            "data": {"root": str(wd / "data"), "batch_size": 64, "eval_batch_size": 256},
            "baseline": {"epochs": 1, "lr": 0.05},
            "prune": {"steps": 2, "calib_batches": 2, "bn_recalib_batches": 4, "recovery_iters": 5},
            "truncate": {
                "recovery_iters": 5,
                "block_tolerance": 100.0,
                "replace": "projection",
                "max_added_drop": 100.0,
                "max_trials": 100,
            },
        }
    )
    prepare_dataset("digits", cfg["data"]["root"])
    baseline.run(
        "digits",
        "resnet_micro",
        str(wd / "dense/model.json"),
        str(wd / "dense/log.json"),
        Settings.from_config(cfg),
        threads=1,
    )
    return wd, cfg


def test_end_to_end_truncation_with_projection(digits, capsys):
    wd, cfg = digits
    dense = wd / "dense/model.json"
    run_stage("prune_filters", dense, wd / "f", "idap", 0.6, cfg)
    rec = run_stage(
        "truncate_layers",
        wd / "f/model.json",
        wd / "t",
        "idap",
        0.6,
        cfg,
        dense=dense,
        dynamics_in=wd / "f/dyn.csv",
    )
    ranked = [ln for ln in capsys.readouterr().out.splitlines() if "by divergence" in ln]
    assert "layer2.0=" in ranked[0] and "layer3.0=" in ranked[0]
    assert set(rec["projected"]) <= {"layer2.0", "layer3.0"}
    assert set(rec["projected"]) == {e["projected"] for e in rec["edits"] if "projected" in e}
    rows = read_dynamics(wd / "t/dyn.csv")
    assert rows[-1]["gmacs"] <= 0.4 * rows[0]["gmacs"] + 1e-9  # target mode reaches the target
    model, _ = load_model(wd / "t/model.json")
    for name in rec["projected"]:
        assert isinstance(model.get_submodule(name), nn.Sequential)


def test_stage2_only_projects_and_resumes(digits, capsys, monkeypatch):
    """Every candidate is tried (unreachable target, no tolerance): each stage keeps exactly
    one original block; a checkpoint left behind is resumed to the same artifact."""
    wd, cfg = digits
    args = ("truncate_layers", wd / "dense/model.json", wd / "s", "idap_stage2", 0.9, cfg)
    monkeypatch.setattr(StepCheckpoint, "clear", lambda self: None)
    rec = run_stage(*args)
    assert rec["truncation_stop"] == "no candidate left"
    assert rec["projected"], "no downsampling block was projected"
    assert all(p["relu"] and p["stride"] == 2 for p in rec["projected"].values())
    removed = set(rec["replaced"]) | set(rec["projected"])
    for stage in ("layer1", "layer2", "layer3"):
        assert len({n for n in removed if n.startswith(stage + ".")}) == 1
    weights = (wd / "s/model.safetensors").read_bytes()
    model, _ = load_model(wd / "s/model.json")
    for name in rec["projected"]:
        assert isinstance(model.get_submodule(name), nn.Sequential)
    capsys.readouterr()
    rec2 = run_stage(*args)  # resumes from the checkpoint
    assert "resuming after" in capsys.readouterr().out
    assert rec2["projected"] == rec["projected"] and rec2["replaced"] == rec["replaced"]
    assert (wd / "s/model.safetensors").read_bytes() == weights
