"""Latency as deployed: BatchNorm folding, TorchScript and ONNX Runtime forms of pruned and
truncated models agree with eager PyTorch, and a backend that cannot run a model leaves a
row that says why."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_vit
from torch import nn

from idap.core.io import write_json
from idap.engine.criteria import create_criterion
from idap.engine.measures import count_macs
from idap.engine.pruning import (
    apply_removal,
    build_graph,
    prunable_layers,
    rank_channels,
)
from idap.models import create_model
from idap.models.deploy import ATOL, RTOL, BackendError, deploy, fold_batchnorm
from idap.reporting.format import num
from idap.reporting.tables import latency_table
from idap.stages.latency import measure_latency


def _trained_looking(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and affine terms, so folding has something to fold."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _pruned_and_truncated() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = _trained_looking(create_model("resnet_micro", 10, 1))
    x = torch.randn(4, 1, 8, 8)
    DG = build_graph(model, x)
    layers = prunable_layers(model, {"fc"})
    widths = {n: m.weight.shape[0] for n, m in layers.items()}
    ranked = rank_channels(model, DG, create_criterion("l1"), {"fc"}, widths, 8, 0.1)
    apply_removal(model, x[:1], ranked[: len(ranked) // 3])
    model.layer2[1] = nn.Identity()  # a truncated block
    return model.eval(), x


def test_batchnorm_folding_keeps_outputs_within_1e_5():
    model = _trained_looking(create_model("resnet_micro", 10, 1))
    x = torch.randn(8, 1, 8, 8)
    folded, fused = fold_batchnorm(model)
    assert fused
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the input is kept
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["compiled", "onnxruntime"])
def test_pruned_and_truncated_model_matches_eager(backend):
    model, x = _pruned_and_truncated()
    d = deploy(backend, model, x[:1], threads=1)
    assert d.info["batchnorm_folded"] is True
    if backend == "onnxruntime":
        assert d.info["opset"] == 17
    with torch.no_grad():
        ref = model(x)
        out = torch.as_tensor(d.run(d.to_input(x)))  # another batch size than the export's
    torch.testing.assert_close(out, ref, atol=ATOL + RTOL * ref.abs().max().item(), rtol=0)


@pytest.mark.parametrize("backend", ["compiled", "onnxruntime"])
def test_tiny_vit_matches_eager(backend):
    vit = tiny_vit()
    x = torch.randn(2, 1, 16, 16)
    d = deploy(backend, vit, x[:1], threads=1)
    with torch.no_grad():
        ref = vit(x)
        out = torch.as_tensor(d.run(d.to_input(x)))
    torch.testing.assert_close(out, ref, atol=ATOL + RTOL * ref.abs().max().item(), rtol=0)


def test_a_backend_that_disagrees_is_refused():
    class Flaky(nn.Module):
        """Traced on one batch, its Python branch is frozen in: wrong on another input."""

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x) if float(x.sum()) > 0 else -self.fc(x)

    model = Flaky().eval()
    pos = torch.ones(1, 4)
    d = deploy("compiled", model, pos)  # fine on the input it was built on
    from idap.models.deploy import check

    with pytest.raises(BackendError, match="disagrees with eager"):
        check(d, model, -pos)


def test_a_failing_backend_leaves_a_row_saying_why(tmp_path):
    model, x = _pruned_and_truncated()
    dense = _trained_looking(create_model("resnet_micro", 10, 1))
    with torch.no_grad():
        assert not torch.allclose(dense(x), model(x))  # two different models
    backends = ("eager", "onnxruntime", "tensorrt")
    # the test reads ratios of medians, not their spread: on a loaded machine a wide IQR
    # must not turn them into "noisy" cells (the noisy marking is test_reporting's)
    timing = dict(batch_sizes=(1, 4), warmup=1, min_run_time=0.01, rounds=1, threads=1)
    timing["noise_share"] = 1e9
    recs = {}
    for name, net in (("dense", dense), ("run", model)):
        recs[name] = measure_latency(net, (1, 8, 8), backends=backends, **timing)
        recs[name]["gmacs"] = count_macs(net, x[:1])[0] / 1e9
    rec = recs["run"]
    rows = {(r["backend"], r["batch_size"]): r for r in rec["results"]}
    assert set(rows) == {(b, n) for b in backends for n in (1, 4)}
    assert rows[("onnxruntime", 1)]["latency_ms_median"] > 0
    assert "TensorRT" in rows[("tensorrt", 1)]["error"]
    assert "error" in rec["backends"]["tensorrt"]
    assert recs["run"]["gmacs"] < 0.8 * recs["dense"]["gmacs"]
    meta = {"dataset": "digits", "model": "resnet_micro", "seed": 0}
    write_json(
        tmp_path / "dense.json", {**recs["dense"], **meta, "method": "dense", "target": None}
    )
    write_json(tmp_path / "run.json", {**rec, **meta, "method": "l1", "target": 0.5})
    df = latency_table([str(tmp_path / "dense.json")], [str(tmp_path / "run.json")])
    trt = df[df["Backend"] == "tensorrt"]
    assert len(trt) == 2 and trt["Pruned ms (median ± IQR)"].str.startswith("failed: ").all()
    # each ratio is the dense record's over the compressed one's, never a record over itself
    ort = df[(df["Backend"] == "onnxruntime") & (df["Batch"] == 1)].iloc[0]
    ms = {
        k: next(
            r["latency_ms_median"]
            for r in recs[k]["results"]
            if (r["backend"], r["batch_size"]) == ("onnxruntime", 1)
        )
        for k in recs
    }
    assert ort["Speed-up"] == pytest.approx(ms["dense"] / ms["run"])
    mac_ratio = recs["dense"]["gmacs"] / recs["run"]["gmacs"]
    assert ort["Speed-up ÷ MAC reduction"] == pytest.approx(ms["dense"] / ms["run"] / mac_ratio)
    assert ort["Base ms (median ± IQR)"].startswith(num(ms["dense"]))
    assert ort["Pruned ms (median ± IQR)"].startswith(num(ms["run"]))


def test_the_exported_onnx_file_is_the_folded_model_and_matches_eager(tmp_path, monkeypatch):
    """The file a user takes away: BatchNorm folded, dynamic batch, same outputs as eager;
    a file that disagrees is not written."""
    import onnx
    import onnxruntime as ort

    from idap.models.deploy import export_onnx

    model, x = _pruned_and_truncated()
    info = export_onnx(model, x[:2], tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert info["batchnorm_folded"] and not [
        n for n in graph.node if n.op_type == "BatchNormalization"
    ]
    assert info["bytes"] == (tmp_path / "m.onnx").stat().st_size
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(x).numpy()  # batch 4: the exported batch axis is dynamic
    got = sess.run(None, {"x": x.numpy()})[0]
    assert abs(got - ref).max() <= ATOL + RTOL * abs(ref).max()
    assert info["max_abs_diff_vs_eager"] <= ATOL + RTOL * abs(ref).max()

    import idap.models.deploy as deploy_module

    lin = nn.Linear(4, 3)
    wrong = nn.Linear(4, 3)  # the exporter writes another model than the one given
    real = deploy_module._onnx_bytes
    monkeypatch.setattr(deploy_module, "_onnx_bytes", lambda model, ex: real(wrong, ex))
    with pytest.raises(BackendError, match="disagrees with eager"):
        export_onnx(lin, torch.randn(2, 4), tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
