"""Pruned models round-trip as data: save -> rebuild by replay -> identical outputs."""

import json

import pytest
import torch
from helpers import ranked_channels
from torch import nn

from idap.engine.measures import count_macs
from idap.engine.pruning import (
    prune_to_macs,
)
from idap.models import create_model, get_spec
from idap.models.artifact import ArtifactError, load_model, save_model
from idap.stages.truncate_layers import candidates


def _pruned_and_truncated():
    model = create_model("resnet_tiny", 10, 1).eval()
    x = torch.randn(8, 1, 28, 28)
    ranked = ranked_channels(model, x, "divergence", {"fc"})
    base = count_macs(model, x)[0]
    pruned, edit, macs = prune_to_macs(model, x, ranked, 0.5 * base)
    pruned.set_submodule("layer2.1", nn.Identity())
    return pruned.eval(), edit, x


def test_save_load_replay_identical(tmp_path):
    model, edit, x = _pruned_and_truncated()
    rec = {
        "arch": "resnet_tiny",
        "num_classes": 10,
        "in_chans": 1,
        "edits": [{"stage": "filter", "step": 1, "removed": edit}],
        "replaced": ["layer2.1"],
    }
    path = save_model(model, tmp_path / "m", rec)
    loaded, rec2 = load_model(path)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert rec2["edits"][0]["removed"] == {k: v for k, v in edit.items()}
    assert isinstance(loaded.layer2[1], nn.Identity)
    assert loaded.layer3[0].conv1.out_channels == model.layer3[0].conv1.out_channels
    # the record is plain JSON and the weights are safetensors: nothing to unpickle
    assert json.loads(path.read_text())["format"] == "idap-model/1"


def test_corrupted_weights_detected(tmp_path):
    model = create_model("resnet_micro", 10, 1)
    path = save_model(
        model, tmp_path / "m", {"arch": "resnet_micro", "num_classes": 10, "in_chans": 1}
    )
    st = tmp_path / "m.safetensors"
    data = bytearray(st.read_bytes())
    data[-5] ^= 0xFF
    st.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="m.safetensors"):
        load_model(path)
    st.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ArtifactError, match="m.safetensors"):
        load_model(path)


def test_pickle_in_place_of_weights_is_refused(tmp_path):
    import pickle

    model = create_model("resnet_micro", 10, 1)
    path = save_model(
        model, tmp_path / "m", {"arch": "resnet_micro", "num_classes": 10, "in_chans": 1}
    )

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    (tmp_path / "m.safetensors").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ArtifactError):
        load_model(path)
    # even with a matching hash the file is parsed as safetensors, never unpickled
    rec = json.loads(path.read_text())
    from idap.core.io import sha256_file

    rec["weights_sha256"] = sha256_file(tmp_path / "m.safetensors")
    path.write_text(json.dumps(rec))
    with pytest.raises(ArtifactError):
        load_model(path)
    assert not (tmp_path / "pwned").exists()


def test_missing_record_is_clear(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        load_model(tmp_path / "nope.json")


def test_truncation_keeps_shapes_and_forward():
    model = create_model("resnet_tiny", 10, 1).eval()
    x = torch.randn(4, 1, 28, 28)
    spec = get_spec("resnet_tiny")
    cands = candidates(model, spec, x)
    # layer2.0 / layer3.0 downsample; every stage keeps at least one block
    assert set(cands) == {"layer1.0", "layer1.1", "layer2.1", "layer3.1"}
    feats = {}
    model.layer2.register_forward_hook(lambda m, i, o: feats.__setitem__("before", o.shape))
    with torch.no_grad():
        model(x)
    model.set_submodule("layer2.1", nn.Identity())
    model.layer2.register_forward_hook(lambda m, i, o: feats.__setitem__("after", o.shape))
    with torch.no_grad():
        y = model(x)
    assert feats["before"] == feats["after"] and y.shape == (4, 10)
    assert torch.isfinite(y).all()
    remaining = candidates(model, spec, x)
    assert "layer2.1" not in remaining and "layer2.0" not in remaining
    model.set_submodule("layer1.0", nn.Identity())
    assert "layer1.1" not in candidates(model, spec, x)  # last live block of its stage
