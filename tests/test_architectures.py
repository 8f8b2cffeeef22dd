"""The paper grid's ten architectures through the whole pipeline, on tiny random inputs.

For each: dense forward; one IDAP++ stage-1 step (divergence scores on a random batch, global
ranking, removal to ~0.9x MACs); stage 2 (a truncation candidate replaced by identity, where
the architecture has candidates); artifact save -> rebuild by replay -> identical outputs.
Then the dense GMACs at each model's own resolution (recorded in docs/paper_grid.md), and the
pretrained-weight loader on fabricated checkpoints (no network, no real weights here).

Random init, small inputs (32 px; Inception-v3's minimum is 75): the point is that every
architecture's graph prunes, truncates and replays, not accuracy.
"""

import pickle
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from idap.engine.criteria import create_criterion
from idap.engine.measures import count_macs
from idap.engine.pruning import (
    HEADS,
    Candidate,
    apply_removal,
    build_graph,
    frozen_layers,
    prunable_layers,
    prune_to_macs,
    rank_channels,
)
from idap.engine.scores import attention_modules, head_scores
from idap.models import HeadAttention, build_vit_b_16, create_model, get_spec, list_models
from idap.models.artifact import load_model, save_model
from idap.models.weights import (
    WeightsUnavailable,
    adapt_stem,
    convert_state_dict,
    load_pretrained,
    torchvision_weights,
    weight_file_name,
)
from idap.stages.truncate_layers import candidates

PAPER = [
    "resnet50",
    "efficientnet_b4",
    "vit_b_16",
    "mobilenet_v3_large",
    "densenet121",
    "convnext_small",
    "vgg19_bn",
    "shufflenet_v2_x2_0",
    "inception_v3",
    "efficientnet_v2_s",
]
# Architectures without truncation candidates, and why (docs/paper_grid.md).
NO_CANDIDATES = {
    "vgg19_bn": "plain conv stack: no block has a skip",
    "inception_v3": "Inception modules have no skip",
    "densenet121": "a dense layer's concat output is never shape-preserving",
    "shufflenet_v2_x2_0": "identity would also drop the unit's channel shuffle",
}
TEST_SIZE = {"inception_v3": 75}  # smallest input the architecture accepts
GREY = {"resnet50", "vit_b_16", "shufflenet_v2_x2_0"}  # also cover the 1-channel stem
NUM_CLASSES = 7

# MACs per image at the model's own resolution, batch 1, torch_pruning.utils.
# count_ops_and_params (conv/linear/attention matmuls + norms, activations, pooling), and the
# conv/linear/attention-matmul MACs alone, which equal torchvision's published "GFLOPS".
GMACS = {
    "resnet50": (224, 4.121925096, 4.089184256),
    "efficientnet_b4": (380, 4.512525240, 4.393771024),
    "vit_b_16": (224, 17.57885284, 17.563828224),
    "mobilenet_v3_large": (224, 0.228356576, 0.216589760),
    "densenet121": (224, 2.882620136, 2.834161664),
    "convnext_small": (224, 8.708881480, 8.683712256),
    "vgg19_bn": (224, 19.697634792, 19.632062464),
    "shufflenet_v2_x2_0": (224, 0.593836112, 0.583253464),
    "inception_v3": (299, 5.733633992, 5.713216096),
    "efficientnet_v2_s": (384, 8.447021408, 8.365617152),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny inputs leave torch little to parallelise (Python overhead dominates); one thread
    also avoids oversubscription when other jobs share the machine's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _build(name: str, in_chans: int, size: int) -> nn.Module:
    if name == "vit_b_16":  # the position embedding fixes the token count: 32 px = 4 patches
        return build_vit_b_16(NUM_CLASSES, in_chans, image_size=size)
    return create_model(name, NUM_CLASSES, in_chans)


def test_registry_covers_the_paper_grid():
    assert set(PAPER) <= set(list_models())
    for name in PAPER:
        spec = get_spec(name)
        w = torchvision_weights(name)
        # the registry's resolution is the one torchvision's weights were evaluated at
        assert spec.input_size == w.transforms().crop_size[0], name
        assert spec.extra["head"] in spec.classifier
        assert len(spec.feature_taps) == 3
        model = create_model(name, NUM_CLASSES, 3)
        for n in (*spec.classifier, *spec.feature_taps, spec.extra["stem"]):
            model.get_submodule(n)  # every name resolves
        assert model.get_submodule(spec.extra["head"]).out_features == NUM_CLASSES
        assert bool(spec.block_types) == (name not in NO_CANDIDATES)


@pytest.mark.slow  # prunes, truncates and replays each of the ten paper architectures
@pytest.mark.parametrize("name", PAPER)
def test_prune_truncate_replay(name, tmp_path):
    spec = get_spec(name)
    size = TEST_SIZE.get(name, 32)
    in_chans = 1 if name in GREY else 3
    model = _build(name, in_chans, size).eval()
    x = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, NUM_CLASSES) and torch.isfinite(y).all()

    # -- stage 1: one IDAP++ filter-pruning step to ~0.9x MACs
    DG = build_graph(model, x)
    ignored = frozen_layers(model, DG, set(spec.classifier))  # as the protocol does
    layers = prunable_layers(model, ignored)
    crit = create_criterion("divergence")
    crit.prepare(model, [x], DG, layers)
    widths = {n: m.weight.shape[0] for n, m in layers.items()}
    ranked = rank_channels(model, DG, crit, ignored, widths, 8, 0.1)
    assert ranked and not {c.root for c in ranked} & ignored
    if name == "vit_b_16":  # MLP hidden units and whole heads; the stream width stays
        kinds = {
            "head" if c.handler == HEADS else ".".join(c.root.rsplit(".", 2)[-2:]) for c in ranked
        }
        assert kinds == {"head", "mlp.0"}
        assert all(c.root.endswith("self_attention") for c in ranked if c.handler == HEADS)
    if name == "shufflenet_v2_x2_0":  # never the shuffled stream's channels
        assert all(c.root in ("conv1.0", "conv5.0") or ".branch2." in c.root for c in ranked)
    base = count_macs(model, x)[0]
    pruned, edit, macs = prune_to_macs(model, x, ranked, 0.9 * base, tolerance=0.05, max_refine=2)
    assert 0.85 * base <= macs <= 0.9 * base and edit
    pruned.eval()
    with torch.no_grad():
        y = pruned(x)
    assert y.shape == (2, NUM_CLASSES) and torch.isfinite(y).all()
    shrunk = [
        n for n, m in prunable_layers(pruned, ignored).items() if m.weight.shape[0] < widths[n]
    ]
    assert shrunk

    # -- stage 2: a truncation candidate replaced by identity
    cands = candidates(pruned, spec, x)
    replaced = []
    if name in NO_CANDIDATES:
        assert not cands, NO_CANDIDATES[name]
    else:
        assert cands
        block = sorted(cands)[len(cands) // 2]
        pruned.set_submodule(block, nn.Identity())
        replaced.append(block)
        with torch.no_grad():
            y = pruned(x)
        assert y.shape == (2, NUM_CLASSES) and torch.isfinite(y).all()
        assert count_macs(pruned, x)[0] < macs
        assert block not in candidates(pruned, spec, x)

    # -- artifact: save, rebuild by replay on a fresh architecture, same outputs
    rec = {
        "arch": name,
        "num_classes": NUM_CLASSES,
        "in_chans": in_chans,
        "edits": [{"stage": "filter", "step": 1, "removed": edit}],
        "replaced": replaced,
    }
    path = save_model(pruned, tmp_path / "m", rec)
    del model, DG, crit
    loaded, rec2 = load_model(path)
    with torch.no_grad():
        assert torch.equal(pruned(x), loaded(x))
    assert rec2["replaced"] == replaced


@pytest.mark.parametrize("name", PAPER)
def test_dense_gmacs_at_own_resolution(name):
    size, ours, conv_linear = GMACS[name]
    spec = get_spec(name)
    assert spec.input_size == size
    model = create_model(name, 1000, 3).eval()
    x = torch.zeros(1, 3, size, size)
    macs, _ = count_macs(model, x)
    assert macs / 1e9 == pytest.approx(ours, rel=1e-6)
    by_hand = _conv_linear_attention_macs(model, x) / 1e9
    assert by_hand == pytest.approx(conv_linear, rel=1e-9)
    # torchvision's published "GFLOPS" (3 decimals) are the conv/linear/attention MACs alone;
    # the package's counter (torch-pruning's) adds biases, norms, activations, pooling and
    # element-wise ops (< 6% here)
    assert torchvision_weights(name).meta["_ops"] == pytest.approx(by_hand, abs=5e-4)
    assert 0 < macs / 1e9 - by_hand < 0.06 * by_hand


def _conv_linear_attention_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs per image counted by hand from forward hooks: each conv output element costs
    in_channels / groups × kernel area, each linear output element in_features, and each
    self-attention block its two matmuls, 2·H·N²·head_dim (its linears are hooked as such)."""
    total = 0

    def conv(m, _inp, out):
        nonlocal total
        area = m.kernel_size[0] * m.kernel_size[1]
        total += out[0].numel() * (m.in_channels // m.groups) * area

    def linear(m, _inp, out):
        nonlocal total
        total += out[0].numel() * m.in_features

    def attention(m, inp, _out):
        nonlocal total
        total += 2 * m.num_heads * inp[0].shape[1] ** 2 * m.head_dim

    hooks = []
    for m in model.modules():
        fn = {nn.Conv2d: conv, nn.Linear: linear, HeadAttention: attention}.get(type(m))
        if fn is not None:
            hooks.append(m.register_forward_hook(fn))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return total


# ------------------------------------------------------------------------- rewritten forwards


def test_shufflenet_unit_matches_torchvision():
    ours = create_model("shufflenet_v2_x2_0", 1000, 3).eval()
    ref = torchvision.models.shufflenet_v2_x2_0().eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))


def test_vit_matches_torchvision_and_loads_its_state_dict():
    ref = torchvision.models.vit_b_16().eval()
    ours = create_model("vit_b_16", 1000, 3).eval()
    state = convert_state_dict("vit_b_16", ref.state_dict())
    assert set(ours.state_dict()) == set(state)
    ours.load_state_dict(state)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5)
    with pytest.raises(Exception, match="position embedding"):
        ours(torch.randn(1, 3, 64, 64))


def test_vit_b_16_heads_are_scored_and_pruned_like_timm():
    model = build_vit_b_16(NUM_CLASSES, 3, image_size=32).eval()  # 4 patches + class token
    x = torch.randn(2, 3, 32, 32)
    attns = attention_modules(model)
    assert len(attns) == 12 and all(a.num_heads == 12 for a in attns.values())
    name, attn = (
        "encoder.layers.encoder_layer_0.self_attention",
        model.encoder.layers[0].self_attention,
    )
    captured = {}
    attn.register_forward_hook(lambda m, i, o: captured.__setitem__("in", i[0]))
    got = head_scores(model, [x], {name: attn})[name]
    with torch.no_grad():  # the same heads through torch's own MultiheadAttention kernel
        mha = nn.MultiheadAttention(768, 12, batch_first=True).eval()
        mha.load_state_dict(
            {
                "in_proj_weight": attn.qkv.weight,
                "in_proj_bias": attn.qkv.bias,
                "out_proj.weight": attn.proj.weight,
                "out_proj.bias": attn.proj.bias,
            }
        )
        t = captured["in"]
        torch.testing.assert_close(
            attn(t, t, t)[0], mha(t, t, t, need_weights=False)[0], rtol=1e-4, atol=1e-5
        )
    assert got.shape == (12,) and (got > 0).all()
    # remove heads 0 and 5 of layer 0 through torch-pruning: 10 heads left, forward intact
    cands = [Candidate(0.0, name, HEADS, 0), Candidate(0.0, name, HEADS, 5)]
    edit = apply_removal(model, x, cands)
    assert edit == {f"{name}:heads": [0, 5]}
    assert (
        attn.num_heads == 10 and attn.qkv.out_features == 3 * 640 and attn.proj.in_features == 640
    )
    with torch.no_grad():
        assert model(x).shape == (2, NUM_CLASSES)


# ------------------------------------------------------------------------- pretrained weights


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache and a download that fails at once, as on this machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    return tmp_path / "torch-home" / "hub" / "checkpoints"


def _params_equal(a: nn.Module, b: nn.Module, skip: str) -> None:
    sb = b.state_dict()
    for k, v in a.state_dict().items():
        if not k.startswith(skip + "."):
            assert torch.equal(v, sb[k]), k


@pytest.mark.parametrize("fmt", ["name.pth", "torchvision.pth", "name.safetensors", "hub"])
def test_load_pretrained_sources_and_fresh_head(fmt, tmp_path, offline_hub):
    from safetensors.torch import save_file

    name = "mobilenet_v3_large"
    src = create_model(name, 1000, 3)
    state = src.state_dict()
    wdir = tmp_path / "weights"
    target = {
        "name.pth": wdir / f"{name}.pth",
        "torchvision.pth": wdir / weight_file_name(name),
        "name.safetensors": wdir / f"{name}.safetensors",
        "hub": offline_hub / weight_file_name(name),
    }[fmt]
    target.parent.mkdir(parents=True)
    if target.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    else:
        torch.save(state, target)
    model = create_model(name, NUM_CLASSES, 3, pretrained=True, weights_dir=str(wdir))
    _params_equal(model, src, skip="classifier.3")
    assert model.classifier[3].out_features == NUM_CLASSES
    fresh = create_model(name, NUM_CLASSES, 3)
    assert not torch.equal(model.classifier[3].weight, src.classifier[3].weight[:NUM_CLASSES])
    assert model.classifier[3].weight.shape == fresh.classifier[3].weight.shape
    kept = create_model(name, 1000, 3)
    load_pretrained(name, kept, wdir, keep_head=True)
    _params_equal(kept, src, skip="")


def test_grey_stem_equals_repeated_channel(tmp_path, offline_hub):
    name = "resnet50"
    src = create_model(name, 1000, 3).eval()
    torch.save(src.state_dict(), tmp_path / f"{name}.pth")
    grey = create_model(name, 1000, 1)
    load_pretrained(name, grey, tmp_path, keep_head=True)
    grey.eval()
    assert grey.conv1.weight.shape[1] == 1
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(grey(x), src(x.repeat(1, 3, 1, 1)), atol=1e-4)
    w = torch.randn(4, 3, 3, 3)
    assert torch.equal(adapt_stem(w, 1), w.sum(1, keepdim=True))
    assert adapt_stem(w, 2).shape == (4, 2, 3, 3)


def test_inception_input_transform_is_folded(tmp_path, offline_hub):
    # torchvision's pretrained Inception-v3 runs with transform_input=True and aux logits
    ref = torchvision.models.inception_v3(
        aux_logits=True, transform_input=True, init_weights=True
    ).eval()
    for m in ref.modules():  # non-trivial BN statistics, so the fold is really exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(ref.state_dict(), tmp_path / "inception_v3.pth")
    ours = create_model("inception_v3", 1000, 3)
    load_pretrained("inception_v3", ours, tmp_path, keep_head=True)
    ours.eval()
    assert not ours.transform_input and ours.AuxLogits is None
    x = torch.randn(2, 3, 80, 80)
    stems = []
    for m in (ours, ref):
        m.Conv2d_1a_3x3.register_forward_hook(lambda _m, _i, o: stems.append(o))
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert torch.allclose(stems[0], stems[1], atol=1e-5)
    # random weights make the logits huge (~1e7): compare relative to their scale
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_densenet_legacy_keys_are_renamed(tmp_path, offline_hub):
    src = create_model("densenet121", 1000, 3)
    legacy = {}
    for k, v in src.state_dict().items():  # the pre-0.3 names torchvision's files still use
        if k.endswith("num_batches_tracked"):  # saved before BN counted its batches
            continue
        for part in ("norm1", "norm2", "conv1", "conv2", "relu1", "relu2"):
            k = k.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        legacy[k] = v
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    torch.save(legacy, tmp_path / "densenet121.pth")
    model = create_model("densenet121", NUM_CLASSES, 3, pretrained=True, weights_dir=tmp_path)
    _params_equal(model, src, skip="classifier")


def test_missing_weights_offline_is_one_line(tmp_path, offline_hub):
    with pytest.raises(WeightsUnavailable) as e:
        create_model("efficientnet_v2_s", 10, 3, pretrained=True, weights_dir=tmp_path / "w")
    msg = str(e.value)
    assert "\n" not in msg and "offline? URLError" in msg
    fname = weight_file_name("efficientnet_v2_s")
    assert str(tmp_path / "w" / "efficientnet_v2_s.pth") in msg
    assert str(offline_hub / fname) in msg


def test_pickled_objects_are_refused(tmp_path, offline_hub):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    (tmp_path / "mobilenet_v3_large.pth").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(WeightsUnavailable, match="cannot read"):
        create_model("mobilenet_v3_large", 10, 3, pretrained=True, weights_dir=tmp_path)
    assert not (tmp_path / "pwned").exists()
