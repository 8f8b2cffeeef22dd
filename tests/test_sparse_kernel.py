"""The sparse_csr latency backend: conv and linear layers with zeroed weights run as CSR
matmuls, agree with eager, say how many layers run sparse, and are timed like the others."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from idap.core.config import ConfigError, load_config
from idap.models.deploy import ATOL, RTOL, deploy
from idap.stages.latency import measure_latency


def _cnn(sparsity: float) -> nn.Module:
    """conv-BN-ReLU-conv-pool-linear; strides, padding and dilation differ between convs."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 24, (3, 2), padding=(2, 1), dilation=(2, 1), bias=False),
        nn.Conv2d(24, 24, 3, padding=1, groups=24),  # depthwise: stays dense
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 10),
    )
    bn = model[1]
    bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 1.5)
    bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-0.1, 0.1)
    g = torch.Generator().manual_seed(1)
    for i in (0, 3, 7):
        w = model[i].weight.data
        w[torch.rand(w.shape, generator=g) < sparsity] = 0
    return model.eval()


@pytest.mark.parametrize("batch", [1, 4])
def test_sparse_model_runs_sparse_and_matches_eager(batch):
    model = _cnn(0.8)
    x = torch.randn(batch, 3, 15, 13)
    d = deploy("sparse_csr", model, x)
    info = d.info
    assert info["sparse_layers"] == 3 and info["dense_layers"] == 1
    assert 0.1 < info["density"] < 0.3 and info["batchnorm_folded"] is True
    with torch.inference_mode():
        ref, out = model(x), d.run(x)
    torch.testing.assert_close(out, ref, atol=ATOL + RTOL * ref.abs().max().item(), rtol=0)


def test_same_and_reflect_padding_and_token_linear():
    """``padding="same"`` with an even kernel pads unevenly; a ViT's linears see (N, T, C)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 4, padding="same", padding_mode="reflect", dilation=2),
        nn.Flatten(2),  # (N, 8, T)
        nn.Linear(10 * 9, 5),
    ).eval()
    for m in (model[0], model[2]):
        m.weight.data[torch.rand(m.weight.shape) < 0.7] = 0
    d = deploy("sparse_csr", model, torch.randn(2, 3, 10, 9))
    assert d.info["sparse_layers"] == 2


def test_dense_model_stays_dense():
    d = deploy("sparse_csr", _cnn(0.0), torch.randn(2, 3, 15, 13))
    assert d.info["sparse_layers"] == 0 and d.info["dense_layers"] == 4


def test_sparse_backend_is_timed_and_its_info_recorded():
    rec = measure_latency(
        _cnn(0.8),
        (3, 15, 13),
        batch_sizes=(1, 4),
        warmup=1,
        min_run_time=0.01,
        rounds=1,
        threads=1,
        backends=("eager", "sparse_csr"),
    )
    rows = {(r["backend"], r["batch_size"]): r for r in rec["results"]}
    assert not [r["error"] for r in rows.values() if "error" in r]
    assert set(rows) == {(b, n) for b in ("eager", "sparse_csr") for n in (1, 4)}
    assert all(r["latency_ms_median"] > 0 for r in rows.values())
    assert rec["backends"]["sparse_csr"]["sparse_layers"] == 3


def test_config_accepts_sparse_csr(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "latency: {backends: [eager, sparse_csr]}\nreport: {latency_backend: sparse_csr}\n"
    )
    assert load_config(str(cfg))["latency"]["backends"] == ["eager", "sparse_csr"]
    cfg.write_text("latency: {backends: [eager, sparse]}\nreport: {latency_backend: eager}\n")
    with pytest.raises(ConfigError):
        load_config(str(cfg))
