"""What a cluster run needs: the training recipe in config (augmentation, keep_head),
jobs that survive a time limit (per-epoch checkpoints), mixed precision, models by library
name, and an env file in step with the package."""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run_stage
from safetensors.torch import load_file, save_file
from torch import nn

import idap
from idap.core import plugins, precision
from idap.core.config import validate_config
from idap.core.settings import Settings
from idap.data import load_data, prepare_dataset
from idap.engine import train as train_mod
from idap.engine.train import accuracy, predict
from idap.models import ModelSpec, create_model, get_spec, register_model
from idap.models.artifact import load_model
from idap.stages import baseline, checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("data")
    prepare_dataset("digits", str(r))
    return r


def _cfg(root, **sections) -> dict:
    cfg = {
        "data": {"root": str(root), "batch_size": 64, "eval_batch_size": 256},
        "baseline": {"epochs": 3, "lr": 0.05},
        "prune": {"steps": 1, "calib_batches": 2, "bn_recalib_batches": 2, "recovery_iters": 2},
        "finetune": {"epochs": 3},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return validate_config(cfg)


# -- augmentation ------------------------------------------------------------------------
def _epoch_images(data, epoch: int) -> dict[int, torch.Tensor]:
    """Index -> image as epoch ``epoch`` of the run's stream serves it."""
    stream = data.train_stream(position=epoch * data.train_stream().per_epoch)
    indices = stream.index_batches(stream.position, stream.per_epoch)
    batches = stream.take(stream.per_epoch)
    out = {}
    for idx, (x, _) in zip(indices, batches, strict=True):
        out.update(zip(idx, x, strict=True))
    return out


@pytest.mark.parametrize("augment", [False, True])
def test_augmentation_changes_train_batches_across_epochs_never_val_or_test(root, augment):
    settings = Settings.from_config(_cfg(root, data={"augment": augment}))
    data = load_data("digits", settings.data, 0)
    torch.manual_seed(0)
    first, second = _epoch_images(data, 0), _epoch_images(data, 1)
    common = sorted(set(first) & set(second))
    changed = sum(not torch.equal(first[i], second[i]) for i in common)
    if augment:
        assert changed > 0.5 * len(common)  # a pad-crop + flip drawn anew each time
    else:
        assert changed == 0
    plain = load_data("digits", Settings.from_config(_cfg(root)).data, 0)
    for split in ("val_loader", "test_loader"):
        for _ in range(2):  # never augmented: the same tensors on every pass
            got = torch.cat([x for x, _ in getattr(data, split)()])
            torch.testing.assert_close(got, torch.cat([x for x, _ in getattr(plain, split)()]))


# -- keep_head ---------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self, num_classes: int, in_chans: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def _load_file(model, weights_dir, keep_head=False):
    state = load_file(str(Path(weights_dir) / "pretrained_net.safetensors"))
    if not keep_head:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    model.load_state_dict(state, strict=False)
    return "file"


register_model(ModelSpec("pretrained_net", _Net, ("head",), extra={"load_pretrained": _load_file}))


def test_keep_head_evaluates_the_pretrained_checkpoint_untouched(root, tmp_path):
    torch.manual_seed(7)
    pretrained = _Net(10, 1)
    save_file(pretrained.state_dict(), str(tmp_path / "pretrained_net.safetensors"))
    cfg = _cfg(
        root,
        baseline={"pretrained": True, "keep_head": True, "epochs": 0, "weights_dir": str(tmp_path)},
    )
    log = baseline.run(
        "digits",
        "pretrained_net",
        str(tmp_path / "dense/model.json"),
        str(tmp_path / "dense/log.json"),
        Settings.from_config(cfg),
        threads=1,
    )
    model, _ = load_model(tmp_path / "dense/model.json")
    for k, v in pretrained.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k  # the head too: nothing trained
    data = load_data("digits", Settings.from_config(cfg).data, 0)
    assert log["val_acc1"] == accuracy(*predict(pretrained, data.val_loader(), torch.device("cpu")))
    assert log["epochs"] == []
    # without keep_head the head is a fresh one for the dataset's classes
    fresh = create_model("pretrained_net", 10, 1, pretrained=True, weights_dir=str(tmp_path))
    assert torch.equal(fresh.conv.weight, pretrained.conv.weight)
    assert not torch.equal(fresh.head.weight, pretrained.head.weight)


# -- time limits -------------------------------------------------------------------------
class _Killed(Exception):
    pass


def _kill_in_chunk(monkeypatch, chunk: int, after_batches: int = 2):
    """Make the ``chunk``-th epoch (1-based) of the next loop die after a few batches."""
    real, calls = train_mod._train, {"n": 0}

    def dying(model, batches, *args):
        calls["n"] += 1
        if calls["n"] == chunk:
            real(model, itertools.islice(batches, after_batches), *args)
            raise _Killed
        return real(model, batches, *args)

    monkeypatch.setattr(train_mod, "_train", dying)


def _baseline(cfg, out: Path) -> dict:
    return baseline.run(
        "digits",
        "resnet_micro",
        str(out / "model.json"),
        str(out / "log.json"),
        Settings.from_config(cfg),
        threads=1,
    )


@pytest.fixture(scope="module")
def dense(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("dense")
    log = _baseline(_cfg(root), out)
    return out, log


def test_baseline_killed_in_its_second_epoch_resumes_to_identical_weights(
    root, dense, tmp_path, monkeypatch, capsys
):
    ref, ref_log = dense
    assert len(ref_log["epochs"]) == 3
    capsys.readouterr()
    out = tmp_path / "killed"
    _kill_in_chunk(monkeypatch, 2)
    with pytest.raises(_Killed):
        _baseline(_cfg(root), out)
    assert (out / ".checkpoint/baseline.pt").is_file() and not (out / "model.json").exists()
    monkeypatch.undo()
    log = _baseline(_cfg(root), out)
    stdout = capsys.readouterr().out
    per_epoch = ref_log["epochs"][0]["iterations"]
    assert f"resumed after {per_epoch} of {3 * per_epoch} iterations" in stdout
    assert log["resumed_after_iterations"] == per_epoch
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert [r["val_acc1"] for r in log["epochs"]] == [r["val_acc1"] for r in ref_log["epochs"]]
    assert not (out / ".checkpoint").exists()
    # one line per epoch: loss, val Acc@1, lr, images/s, ETA (the resumed run: epochs 2, 3)
    line = r"epoch (\d)/3  loss [\d.]+  val Acc@1 [\d.]+  lr \S+  \d+ img/s  ETA \d:\d\d:\d\d"
    killed, resumed = stdout.split("resumed after")
    assert [m.group(1) for m in re.finditer(line, killed)] == ["1"], killed
    assert [m.group(1) for m in re.finditer(line, resumed)] == ["2", "3"], resumed


def test_finetune_killed_in_its_second_epoch_resumes_to_identical_weights(
    root, dense, tmp_path, monkeypatch, capsys
):
    d, _ = dense
    cfg = _cfg(root)
    pruned = tmp_path / "pruned"
    run_stage("prune_filters", d / "model.json", pruned, "l1", 0.4, cfg)

    def finetune(out: Path) -> None:
        run_stage(
            "finetune",
            pruned / "model.json",
            out,
            "l1",
            None,
            cfg,
            dense=d / "model.json",
            dynamics_in=pruned / "dyn.csv",
        )

    finetune(tmp_path / "ref")
    _kill_in_chunk(monkeypatch, 2)
    with pytest.raises(_Killed):
        finetune(tmp_path / "killed")
    assert (tmp_path / "killed/.checkpoint/finetune.pt").is_file()
    monkeypatch.undo()
    capsys.readouterr()
    finetune(tmp_path / "killed")
    assert re.search(r"\[finetune\] resumed after \d+ of \d+ iterations", capsys.readouterr().out)
    ref, got = tmp_path / "ref", tmp_path / "killed"
    assert (got / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert not (got / ".checkpoint").exists()


def test_a_checkpoint_from_other_settings_is_not_resumed(root, dense, tmp_path, monkeypatch):
    out = tmp_path / "other"
    _kill_in_chunk(monkeypatch, 2)
    with pytest.raises(_Killed):
        _baseline(_cfg(root), out)
    monkeypatch.undo()
    log = _baseline(_cfg(root, baseline={"lr": 0.04}), out)  # other inputs: start over
    assert log["resumed_after_iterations"] == 0


def test_a_checkpoint_from_other_code_is_not_resumed(root, tmp_path, monkeypatch):
    """Snakemake reruns a job whose code changed; the rerun must not resume the loop state
    the old code left (an edited stage would otherwise go on from the old stage's choices)."""
    out = tmp_path / "edited"
    _kill_in_chunk(monkeypatch, 2)
    with pytest.raises(_Killed):
        _baseline(_cfg(root), out)
    monkeypatch.undo()
    monkeypatch.setattr(checkpoint, "package_digest", lambda: "the package after an edit")
    assert _baseline(_cfg(root), out)["resumed_after_iterations"] == 0


def test_a_checkpoint_from_an_edited_plugin_is_not_resumed(root, tmp_path, monkeypatch):
    """The same for a plugin the job imported (its file is in the rule's code hash, so
    Snakemake reruns the job after an edit); left unedited, the checkpoint is resumed."""
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text("WIDTH = 1\n")
    monkeypatch.setattr(plugins, "_loaded", {})
    plugins.load_plugin(str(plugin))
    for edit, resumed in ((False, True), (True, False)):
        out = tmp_path / f"edited-{edit}"
        with pytest.MonkeyPatch.context() as mp:
            _kill_in_chunk(mp, 2)
            with pytest.raises(_Killed):
                _baseline(_cfg(root), out)
        if edit:
            plugin.write_text("WIDTH = 2\n")
        assert (_baseline(_cfg(root), out)["resumed_after_iterations"] > 0) == resumed, edit


# -- precision ---------------------------------------------------------------------------
def test_bf16_autocast_runs_the_training_forwards_and_fp16_needs_cuda():
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        precision.resolve(cpu, "fp16")
    assert precision.resolve(cpu, "auto") == precision.Precision("cpu", None, False)
    seen = []
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 3))
    model[2].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    try:
        precision.configure(cpu, "bf16", channels_last=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        rows = train_mod.train_steps(
            model,
            [(x, y)] * 2,
            2,
            opt,
            lambda a, b: nn.functional.cross_entropy(model(a), b),
            cpu,
            "t",
            chunk=1,
        )
        assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    finally:
        precision.configure(cpu)
    assert seen == [torch.bfloat16, torch.bfloat16] and all(r["train_loss"] > 0 for r in rows)
    assert model[0].weight.dtype == torch.float32  # master weights stay fp32


# -- models by library name --------------------------------------------------------------
@pytest.mark.parametrize("name", ["timm:resnet18", "tv:resnet18"])
def test_library_models_compress_by_name(root, name):
    spec = get_spec(name)
    assert spec.classifier == ("fc",) and spec.extra["stem"] == "conv1"
    data = load_data("digits", Settings.from_config(_cfg(root)).data, 0)
    model = create_model(name, 10, 1)
    small, rec = idap.compress(
        model,
        data.splits.train,
        data.splits.val,
        target=0.3,
        method="l1",
        arch=name,
        settings={
            "prune": {"steps": 1, "recovery_iters": 1, "calib_batches": 1, "bn_recalib_batches": 1},
            "finetune": {"epochs": 0},
        },
    )
    reduction = 1 - rec["final"]["macs"] / rec["dense"]["macs"]
    assert 0.3 <= reduction <= 0.3 + 0.01 * 0.7 + 1e-9
    assert small(torch.randn(2, 1, 8, 8)).shape == (2, 10)


# -- set-up ------------------------------------------------------------------------------
def _requirement_names(reqs) -> dict[str, str]:
    return {re.split(r"[<>=!~ \[]", r, maxsplit=1)[0].lower(): r.replace(" ", "") for r in reqs}


def test_env_file_installs_the_packages_dependencies_with_the_same_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "envs/idap.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _requirement_names(pip) == _requirement_names(deps)
    assert not any(p.startswith("-e") or p.startswith(".") for p in pip)  # no relative install


def test_every_rule_script_imports_its_own_checkout():
    for script in (ROOT / "workflow_scripts").glob("[a-z]*.py"):
        text = script.read_text()
        assert text.index("import _checkout") < text.index("from idap"), script.name


def test_config_json_of_a_job_names_the_plugins(tmp_path):
    plugin = tmp_path / "p.py"
    plugin.write_text("LOADED = True\n")
    cfg = validate_config({"plugins": [str(plugin)]})
    assert Settings.from_config(json.loads(json.dumps(cfg))).plugins == [str(plugin)]
