"""Bad inputs fail with one clear line, a non-zero exit and nothing half-written.

Every case of docs/bad_inputs.md is here. Stages run in-process through ``idap.cli.main``
(stderr captured); workflow-level cases run Snakemake itself (three invocations). Each case
checks: exactly one ``idap <cmd>: error: ...`` line carrying the documented message, no
traceback, exit status 1, no output file and no ``*.tmp`` left behind.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import idap.core.io
from idap.cli import main
from idap.core.config import validate_config
from idap.core.io import sha256_file
from idap.core.settings import Settings
from idap.data import prepare_dataset
from idap.models import create_model
from idap.models.artifact import save_model
from idap.stages import baseline, jobs

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ERROR_LINE = re.compile(r"^idap [a-z-]+: error: ")


# -- helpers ---------------------------------------------------------------------------
def run_cli(capsys, *argv: str) -> str:
    """Run ``idap argv`` in-process; assert exit 1 and exactly one error line; return it."""
    capsys.readouterr()  # drop anything earlier
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    # tqdm redraws with "\r": what a terminal shows of a line is its last "\r" segment
    lines = [seg.split("\r")[-1].strip() for seg in err.split("\n")]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    assert rc == 1, f"exit {rc}, stderr: {err[-2000:]}"
    assert len(errors) == 1, f"want one error line, got {errors!r} in {err[-2000:]!r}"
    assert "Traceback" not in err, err[-2000:]
    if log := os.environ.get("IDAP_BAD_INPUTS_LOG"):  # to refresh docs/bad_inputs.md
        with open(log, "a") as f:
            f.write(errors[0] + "\n")
    return errors[0]


def baseline_argv(tmp_path: Path, out: Path, log: Path | None = None) -> list:
    """``idap baseline`` on digits / resnet_micro writing ``out``; callers append the rest."""
    log = tmp_path / "l.json" if log is None else log
    return [
        "baseline", "--dataset", "digits", "--model", "resnet_micro", "--out", out, "--log", log
    ]  # fmt: skip


def prune_argv(tmp_path: Path, model, out: Path, method: str, target: str, settings: str) -> list:
    """``idap prune-filters`` on digits writing ``out`` and ``tmp_path/d.csv``."""
    return [
        "prune-filters", "--dataset", "digits", "--model", model, "--method", method,
        "--target", target, "--out", out, "--dynamics", tmp_path / "d.csv",
        "--settings", settings,
    ]  # fmt: skip


def assert_nothing_written(root: Path, *outputs: Path) -> None:
    for out in outputs:
        assert not Path(out).exists(), f"{out} was written"
    assert not list(Path(root).rglob("*.tmp")), "a temporary file was left behind"


def expect(line: str, message: str) -> None:
    """The error line is ``idap <cmd>: error: <message>`` exactly."""
    assert line.split(": error: ", 1)[1] == message, line


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: tiny models gain nothing from more, and a busy CI box loses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Digits prepared, a dense resnet_micro and a 1-step L1-pruned one (tiny settings)."""
    wd = tmp_path_factory.mktemp("bad_inputs")
    cfg = validate_config(
        {
            "data": {"root": str(wd / "data"), "batch_size": 64, "eval_batch_size": 256},
            "baseline": {"epochs": 1, "lr": 0.05},
            "prune": {"steps": 1, "calib_batches": 1, "bn_recalib_batches": 2, "recovery_iters": 2},
        }
    )
    prepare_dataset("digits", cfg["data"]["root"])
    dense = wd / "dense/model.json"
    settings = Settings.from_config(cfg)
    baseline.run("digits", "resnet_micro", str(dense), str(wd / "dense/log.json"), settings)
    pruned = wd / "pruned/model.json"
    jobs.run_stage(
        "prune_filters",
        model=str(dense),
        dense=str(dense),
        out_model=str(pruned),
        out_dynamics=str(wd / "pruned/dynamics.csv"),
        dataset="digits",
        method="l1",
        target=0.5,
        settings=settings,
    )
    settings = json.dumps({k: cfg[k] for k in ("data", "prune")})
    return {"wd": wd, "cfg": cfg, "dense": dense, "pruned": pruned, "settings": settings}


def evaluate_args(env, model: Path, out: Path, dataset: str = "digits") -> list:
    return [
        "evaluate",
        "--dataset",
        dataset,
        "--model",
        model,
        "--out",
        out,
        "--settings",
        env["settings"],
    ]


def copy_artifact(src: Path, dst_dir: Path) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst_dir / "model.json")
    shutil.copy(src.with_suffix(".safetensors"), dst_dir / "model.safetensors")
    return dst_dir / "model.json"


# -- config files ----------------------------------------------------------------------
CONFIG_CASES = [
    # (id, YAML text, exact message after "config: " or the whole message)
    (
        "malformed_yaml",
        "grid: [unclosed\n",
        "config file {path} is not valid YAML at line 2, column 1: expected ',' or ']', "
        "but got '<stream end>'",
    ),
    (
        "tab_indented_yaml",
        "prune:\n\tsteps: 3\n",
        "config file {path} is not valid YAML at line 2, column 1: found character '\\t' "
        "that cannot start any token",
    ),
    ("not_a_mapping", "- seed\n- 1\n", "config: expected a mapping at the top level, got list"),
    ("unknown_top_key", "foo: 1\n", "config: <top>: unknown key 'foo' (valid: "),
    ("unknown_nested_key", "prune:\n  stpes: 3\n", "config: prune: unknown key 'stpes' (valid: "),
    (
        "wrong_type",
        "baseline:\n  epochs: three\n",
        "config: baseline.epochs: 'three' is not of type 'integer'",
    ),
    (
        "wrong_type_list",
        "grid:\n  targets: 0.5\n",
        "config: grid.targets: 0.5 is not of type 'array'",
    ),
    (
        "target_zero",
        "grid:\n  targets: [0]\n",
        "config: grid.targets.0: 0 is less than or equal to the minimum of 0",
    ),
    (
        "target_one",
        "grid:\n  targets: [1.0]\n",
        "config: grid.targets.0: 1.0 is greater than or equal to the maximum of 1",
    ),
    (
        "negative_batch_size",
        "data:\n  batch_size: -4\n",
        "config: data.batch_size: -4 is less than the minimum of 1",
    ),
    (
        "val_fraction_one",
        "data:\n  val_fraction: 1.0\n",
        "config: data.val_fraction: 1.0 is greater than or equal to the maximum of 1",
    ),
    (
        "duplicate_grid_entries",
        "grid:\n  models: [resnet_micro, resnet_micro]\n",
        "config: grid.models: ['resnet_micro', 'resnet_micro'] has non-unique elements",
    ),
    (
        "unknown_model",
        "grid:\n  models: [resnet_9000]\n",
        "config: grid.models: unknown model 'resnet_9000'; valid: ",
    ),
    (
        "unknown_dataset",
        "grid:\n  datasets: [imagenet_x]\n",
        "config: grid.datasets: unknown dataset 'imagenet_x'; valid: ",
    ),
    (
        "unknown_method",
        "grid:\n  methods: [oracle]\n",
        "config: grid.methods: unknown method 'oracle'; valid: ",
    ),
    (
        "plugin_not_importable",
        "plugins: [no_such_plugin_module]\n",
        "config: plugins: plugin 'no_such_plugin_module' failed to import (ModuleNotFoundError: "
        "No module named 'no_such_plugin_module')",
    ),
    (
        "keep_head_without_pretrained",
        "baseline:\n  keep_head: true\n",
        "config: baseline.keep_head needs baseline.pretrained (a head to keep)",
    ),
    (
        "unknown_device",
        "device: gpu\n",
        "config: device: 'gpu' is not a valid choice (valid: cpu, cuda, auto)",
    ),
]


@pytest.mark.parametrize(
    "text, message", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
def test_bad_config_file(capsys, tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    line = run_cli(capsys, "check-config", path)
    assert message.format(path=path) in line, line
    # a stage given the same file stops before touching anything
    out = tmp_path / "out/model.json"
    line = run_cli(
        capsys, *baseline_argv(tmp_path, out, log=tmp_path / "out/log.json"), "--config", path
    )
    assert message.format(path=path) in line, line
    assert_nothing_written(tmp_path, out, tmp_path / "out")


def test_config_file_missing(capsys, tmp_path):
    line = run_cli(capsys, "check-config", tmp_path / "nope.yaml")
    expect(line, f"config file not found: {tmp_path / 'nope.yaml'}")


# -- command-line arguments ------------------------------------------------------------
def test_settings_not_json(capsys, tmp_path):
    out = tmp_path / "m.json"
    line = run_cli(capsys, *baseline_argv(tmp_path, out), "--settings", "{data: 1}")
    expect(
        line,
        "--settings is not valid JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)",
    )
    assert_nothing_written(tmp_path, out)


def test_settings_not_an_object(capsys, tmp_path):
    out = tmp_path / "m.json"
    line = run_cli(capsys, *baseline_argv(tmp_path, out), "--settings", "[1, 2]")
    expect(line, "--settings must be a JSON object, got list")
    assert_nothing_written(tmp_path, out)


def test_settings_bad_value(capsys, tmp_path):
    out = tmp_path / "m.json"
    line = run_cli(
        capsys, *baseline_argv(tmp_path, out), "--settings", '{"data": {"batch_size": 0}}'
    )
    expect(line, "config: data.batch_size: 0 is less than the minimum of 1")
    assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize(
    "meta, message",
    [
        (
            "{bad",
            "--meta is not valid JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)",
        ),
        ('["model"]', "--meta must be a JSON object, got list"),
    ],
)
def test_meta_not_a_json_object(capsys, env, tmp_path, meta, message):
    out = tmp_path / "metrics.json"
    line = run_cli(capsys, *evaluate_args(env, env["dense"], out), "--meta", meta)
    expect(line, message)
    assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize("stage", ["prune-filters", "truncate-layers"])
@pytest.mark.parametrize("target", ["0", "1", "1.5", "-0.2", "nan"])
def test_cli_target_outside_unit_interval(capsys, env, tmp_path, stage, target):
    out = tmp_path / "model.json"
    extra = ["--dynamics-in", tmp_path / "in.csv"] if stage == "truncate-layers" else []
    line = run_cli(
        capsys,
        stage,
        "--dataset",
        "digits",
        "--model",
        env["pruned"],
        "--method",
        "idap",
        "--target",
        target,
        "--out",
        out,
        "--dynamics",
        tmp_path / "d.csv",
        *extra,
        "--settings",
        env["settings"],
    )
    expect(line, f"--target must be a reduction in (0, 1), got {float(target)}")
    assert_nothing_written(tmp_path, out, tmp_path / "d.csv")


def test_unknown_model_dataset_method_on_the_cli(capsys, env, tmp_path):
    out = tmp_path / "model.json"
    common = ["--out", out, "--log", tmp_path / "log.json", "--settings", env["settings"]]
    line = run_cli(capsys, "baseline", "--dataset", "digits", "--model", "resnet_9000", *common)
    assert re.fullmatch(
        r"unknown model 'resnet_9000'; valid: .*resnet_micro.*", line.split(": error: ")[1]
    ), line
    line = run_cli(
        capsys, "baseline", "--dataset", "imagenet_x", "--model", "resnet_micro", *common
    )
    assert re.fullmatch(
        r"unknown dataset 'imagenet_x'; valid: .*digits.*", line.split(": error: ")[1]
    ), line
    line = run_cli(
        capsys, *prune_argv(tmp_path, env["dense"], out, "oracle", "0.5", env["settings"])
    )
    # a KeyError's message is printed unquoted
    assert re.fullmatch(
        r"unknown method 'oracle'; valid: .*idap.*l1.*", line.split(": error: ")[1]
    ), line
    assert_nothing_written(tmp_path, out, tmp_path / "d.csv")


def test_negative_threads(capsys, tmp_path):
    out = tmp_path / "model.json"
    line = run_cli(capsys, *baseline_argv(tmp_path, out), "--threads", "-2")
    expect(line, "threads must be a positive integer, got -2")
    assert_nothing_written(tmp_path, out)


# -- data ------------------------------------------------------------------------------
def _data_settings(env, root: Path) -> str:
    return json.dumps({"data": {**env["cfg"]["data"], "root": str(root)}})


def _bad_dataset(env, root: Path, how: str) -> None:
    """A digits directory under ``root`` broken in one way."""
    d = root / "digits"
    if how == "missing_dir":
        return
    d.mkdir(parents=True)
    src = Path(env["cfg"]["data"]["root"]) / "digits"
    shutil.copy(src / "manifest.json", d / "manifest.json")
    if how == "no_data_file":
        return
    if how == "empty_data_file":
        (d / "data.safetensors").write_bytes(b"")
    elif how == "truncated_data_file":
        (d / "data.safetensors").write_bytes((src / "data.safetensors").read_bytes()[:1000])
    elif how == "manifest_not_json":
        shutil.copy(src / "data.safetensors", d / "data.safetensors")
        (d / "manifest.json").write_text("{not json")
    elif how == "no_images":
        from safetensors.torch import save_file

        u8, i64 = torch.uint8, torch.int64
        empty = {
            "train_x": torch.zeros(0, 8, 8, dtype=u8),
            "train_y": torch.zeros(0, dtype=i64),
            "test_x": torch.zeros(0, 8, 8, dtype=u8),
            "test_y": torch.zeros(0, dtype=i64),
        }
        save_file(empty, str(d / "data.safetensors"))
    elif how == "other_tensors":
        from safetensors.torch import save_file

        save_file({"images": torch.zeros(3, 8, 8)}, str(d / "data.safetensors"))
    else:
        raise ValueError(how)


DATA_CASES = [
    (
        "missing_dir",
        "dataset 'digits' is not prepared: {d}/manifest.json missing; run the "
        "download stage (idap download / prepare_dataset) first",
    ),
    ("no_data_file", "{d}/data.safetensors missing; rerun the download stage"),
    (
        "empty_data_file",
        "dataset 'digits' under {d} is unreadable (SafetensorError: {lib}); delete it and "
        "rerun the download stage",
    ),
    (
        "truncated_data_file",
        "dataset 'digits' under {d} is unreadable (SafetensorError: {lib}); delete it and "
        "rerun the download stage",
    ),
    (
        "manifest_not_json",
        "dataset 'digits' under {d} is unreadable (JSONDecodeError: Expecting "
        "property name enclosed in double quotes: line 1 column 2 (char 1)); "
        "delete it and rerun the download stage",
    ),
    (
        "no_images",
        "dataset 'digits' under {d} is empty (train 0, val 0, test 0 images); delete "
        "it and rerun the download stage",
    ),
    (
        "other_tensors",
        "dataset 'digits' under {d} is unreadable (KeyError: 'train_x'); delete "
        "it and rerun the download stage",
    ),
]


@pytest.mark.parametrize("how, message", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_dataset_directory(capsys, env, tmp_path, how, message):
    root = tmp_path / "data"
    _bad_dataset(env, root, how)
    out = tmp_path / "out/metrics.json"
    line = run_cli(
        capsys,
        "evaluate",
        "--dataset",
        "digits",
        "--model",
        env["dense"],
        "--out",
        out,
        "--settings",
        _data_settings(env, root),
    )
    # {lib}: the parser's own words (safetensors' wording varies between versions)
    pattern = re.escape(message.format(d=root / "digits", lib="@LIB@")).replace("@LIB@", ".+")
    assert re.fullmatch(pattern, line.split(": error: ", 1)[1]), line
    assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize(
    "in_chans, size, message",
    [
        (
            3,
            32,
            "expects 3x32x32 inputs (10 classes) but dataset 'digits' has 1x8x8 images "
            "(10 classes)",
        ),
        (
            1,
            28,
            "expects 1x28x28 inputs (10 classes) but dataset 'digits' has 1x8x8 images "
            "(10 classes)",
        ),
    ],
)
def test_model_input_shape_differs_from_data(capsys, env, tmp_path, in_chans, size, message):
    rec = {"arch": "resnet_micro", "num_classes": 10, "in_chans": in_chans, "input_size": size}
    model = save_model(create_model("resnet_micro", 10, in_chans), tmp_path / "m/model.json", rec)
    out = tmp_path / "metrics.json"
    line = run_cli(capsys, *evaluate_args(env, model, out))
    expect(line, f"model {model} {message}")
    # the same check guards the reference model and the fine-tune inputs
    line = run_cli(capsys, *evaluate_args(env, env["dense"], out), "--reference", model)
    expect(line, f"model {model} {message}")
    ft = tmp_path / "ft/model.json"
    line = run_cli(
        capsys,
        "finetune",
        "--method",
        "l1",
        "--dataset",
        "digits",
        "--model",
        env["pruned"],
        "--dense",
        model,
        "--dynamics-in",
        env["pruned"].with_name("dynamics.csv"),
        "--out",
        ft,
        "--dynamics",
        tmp_path / "ft/d.csv",
        "--settings",
        env["settings"],
    )
    expect(line, f"model {model} {message}")
    assert_nothing_written(tmp_path, out, ft)


# -- pruning and training --------------------------------------------------------------
def test_missed_mac_target_fails_the_job(capsys, env, tmp_path):
    out = tmp_path / "model.json"
    settings = json.loads(env["settings"])
    settings["prune"]["mac_tolerance"] = 1e-7  # no set of whole channels lands this close
    line = run_cli(
        capsys, *prune_argv(tmp_path, env["dense"], out, "l1", "0.5", json.dumps(settings))
    )
    assert re.fullmatch(
        r"l1 missed its MAC target: reached -[\d.]+% MACs for a -50.0% target, [+-][\d.]+% of "
        r"the target MACs \(tolerance ±1e-05%\)",
        line.split(": error: ")[1],
    ), line
    assert_nothing_written(tmp_path, out, tmp_path / "d.csv")


def test_unreachable_mac_target(capsys, env, tmp_path):
    out = tmp_path / "model.json"
    line = run_cli(capsys, *prune_argv(tmp_path, env["dense"], out, "l1", "0.99", env["settings"]))
    assert re.fullmatch(
        r"l1 cannot reach a -99\.0% MAC target: every channel above the per-layer floors "
        r"removed leaves -[\d.]+% \([\d.]+ M MACs > [\d.]+ M MACs\); refused before step 1 "
        r"\(lower the target, prune\.min_keep or prune\.min_keep_fraction\)",
        line.split(": error: ")[1],
    ), line
    assert_nothing_written(tmp_path, out, tmp_path / "d.csv", tmp_path / ".checkpoint")


class BranchyNet(nn.Module):
    """Data-dependent Python control flow: tracing sees only the branch the example takes."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = self.c2(h) if h.mean() > 0 else self.c3(h)
        return self.fc(h.mean((2, 3)))


def _branchy():
    torch.manual_seed(0)
    model = BranchyNet().eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.relu(model.c1(x)).mean() > 0  # the example never reaches c3
    return model, x


@pytest.mark.parametrize("criterion", ["divergence", "l1"])
def test_untraceable_model_is_refused(criterion):
    from idap.engine.pruning import build_graph

    model, x = _branchy()
    with pytest.raises(RuntimeError) as e:
        build_graph(model, x)
    msg = str(e.value)
    assert "cannot trace" in msg and "c3" in msg and "\n" not in msg


def test_nan_loss_during_finetune(capsys, env, tmp_path):
    out = tmp_path / "model.json"
    settings = json.dumps({**json.loads(env["settings"]), "finetune": {"epochs": 1, "lr": 1e30}})
    line = run_cli(
        capsys,
        "finetune",
        "--method",
        "l1",
        "--dataset",
        "digits",
        "--model",
        env["pruned"],
        "--dense",
        env["dense"],
        "--dynamics-in",
        env["pruned"].with_name("dynamics.csv"),
        "--out",
        out,
        "--dynamics",
        tmp_path / "d.csv",
        "--settings",
        settings,
    )
    expect(line, "non-finite loss (nan) during finetune; lower the lr")
    assert_nothing_written(tmp_path, out, out.with_suffix(".safetensors"), tmp_path / "d.csv")


# -- model artifacts -------------------------------------------------------------------
def test_model_record_missing(capsys, env, tmp_path):
    out = tmp_path / "metrics.json"
    line = run_cli(capsys, *evaluate_args(env, tmp_path / "nope/model.json", out))
    expect(line, f"model record not found: {tmp_path / 'nope/model.json'}")
    assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize("how", ["not_json", "pickle", "other_format", "json_list", "no_hash"])
def test_bad_model_record(capsys, env, tmp_path, how):
    model = copy_artifact(env["dense"], tmp_path / "m")
    rec = json.loads(model.read_text())
    if how == "not_json":
        model.write_text("arch: resnet_micro\n")
        message = (
            f"model record {model} is not valid JSON (Expecting value: line 1 column 1 (char 0))"
        )
    elif how == "pickle":
        model.write_bytes(pickle.dumps(rec))
        message = (
            f"model record {model} is not valid JSON ('utf-8' codec can't decode byte "
            f"0x80 in position 0: invalid start byte)"
        )
    elif how == "other_format":  # e.g. a metrics file passed as a model
        model.write_text(json.dumps({"format": "onnx", "test_acc1": 90.0}))
        message = f"{model} is not an idap model record (format 'onnx')"
    elif how == "json_list":
        model.write_text("[1, 2]")
        message = f"{model} is not an idap model record (JSON list)"
    else:
        del rec["weights_sha256"]
        model.write_text(json.dumps(rec))
        message = f"model record {model} lacks 'weights_sha256'"
    out = tmp_path / "metrics.json"
    expect(run_cli(capsys, *evaluate_args(env, model, out)), message)
    assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize("how", ["missing", "flipped_byte", "truncated", "pickle", "empty"])
def test_bad_weights_file(capsys, env, tmp_path, how):
    model = copy_artifact(env["dense"], tmp_path / "m")
    st = model.with_suffix(".safetensors")
    data = st.read_bytes()
    if how == "missing":
        st.unlink()
    elif how == "flipped_byte":
        st.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    elif how == "truncated":
        st.write_bytes(data[: len(data) // 2])
    elif how == "pickle":
        st.write_bytes(pickle.dumps({"conv1.weight": torch.zeros(1)}))
    else:
        st.write_bytes(b"")
    out = tmp_path / "metrics.json"
    line = run_cli(capsys, *evaluate_args(env, model, out))
    if how == "missing":
        expect(line, f"weights file missing: {st}")
    else:
        expect(line, f"weights file {st} does not match its record (sha256 differs)")
    assert_nothing_written(tmp_path, out)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_pickle_with_matching_hash_is_never_unpickled(capsys, env, tmp_path):
    model = copy_artifact(env["dense"], tmp_path / "m")
    st = model.with_suffix(".safetensors")
    st.write_bytes(pickle.dumps(_Evil(str(tmp_path / "pwned"))))
    rec = json.loads(model.read_text())
    rec["weights_sha256"] = sha256_file(st)
    model.write_text(json.dumps(rec))
    out = tmp_path / "metrics.json"
    line = run_cli(capsys, *evaluate_args(env, model, out))
    assert line.split(": error: ")[1].startswith(f"cannot read weights {st}: "), line
    assert not (tmp_path / "pwned").exists()
    assert_nothing_written(tmp_path, out)


# -- environment -----------------------------------------------------------------------
def test_full_disk(capsys, env, tmp_path, monkeypatch):
    def no_space(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(idap.core.io.os, "replace", no_space)
    out = tmp_path / "dense/model.json"
    settings = json.dumps(
        {"data": {**env["cfg"]["data"], "train_subset": 64}, "baseline": {"epochs": 1}}
    )
    line = run_cli(
        capsys,
        *baseline_argv(tmp_path, out, log=tmp_path / "dense/log.json"),
        "--settings",
        settings,
    )
    st = out.with_suffix(".safetensors")
    expect(line, f"[Errno 28] cannot write {st}: No space left on device")
    assert_nothing_written(tmp_path, out, st, tmp_path / "dense/log.json")


def test_read_only_results_directory(capsys, env, tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    out = results / "metrics.json"
    if os.geteuid() == 0:  # chmod does not stop root (CI): simulate what the OS would say
        real = idap.core.io.tempfile.mkstemp

        def denied(*args, dir=None, **kwargs):
            if Path(dir) == results:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(idap.core.io.tempfile, "mkstemp", denied)
    else:
        results.chmod(0o555)
    try:
        line = run_cli(capsys, *evaluate_args(env, env["dense"], out))
    finally:
        results.chmod(0o755)
    expect(line, f"[Errno 13] cannot write {out}: Permission denied")
    assert_nothing_written(tmp_path, out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_requested_without_cuda(capsys, env, tmp_path):
    out = tmp_path / "model.json"
    line = run_cli(capsys, *baseline_argv(tmp_path, out), "--settings", '{"device": "cuda"}')
    expect(line, "device 'cuda' requested but no CUDA device is available")
    lat = tmp_path / "latency.json"
    line = run_cli(
        capsys,
        "latency",
        "--model",
        env["dense"],
        "--out",
        lat,
        "--settings",
        '{"latency": {"device": "cuda"}}',
    )
    expect(line, "latency device 'cuda' requested but torch.cuda.is_available() is False")
    assert_nothing_written(tmp_path, out, lat)


def test_offline_pretrained_weights(tmp_path, monkeypatch):
    from idap.models import create_model
    from idap.models.weights import WeightsUnavailable

    hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))  # an empty hub cache; no network here

    def offline(*a, **k):
        raise OSError("network unreachable (offline)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    try:
        with pytest.raises(WeightsUnavailable) as e:
            create_model("resnet50", 10, 3, pretrained=True, weights_dir=str(tmp_path / "w"))
    finally:
        torch.hub.set_dir(hub)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "w") in msg


# -- workflow level (Snakemake; three invocations) -------------------------------------
def snakemake(workdir: Path, configfile: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    cmd = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "1",
        "--configfile",
        configfile,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "malformed",
            "grid: [unclosed\n",
            "Config file is not valid JSON or YAML. In case of YAML, make sure to not mix "
            "whitespace and tab indentation.",
        ),
        ("missing", None, "FileNotFoundError: [Errno 2] No such file or directory: 'missing.yaml'"),
        (
            "duplicates",
            "grid:\n  targets: [0.5, 0.5]\n",
            "config: grid.targets: [0.5, 0.5] has non-unique elements",
        ),
    ],
)
def test_workflow_rejects_bad_config_before_any_job(tmp_path, name, text, message):
    if text is not None:
        (tmp_path / f"{name}.yaml").write_text(text)
    res = snakemake(tmp_path, f"{name}.yaml")
    assert res.returncode != 0
    assert message in res.stderr.splitlines(), res.stderr[-3000:]
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()
    assert not (tmp_path / "logs").exists()
    assert_nothing_written(tmp_path)


def test_a_job_whose_rule_omits_a_section_fails_naming_it(env, tmp_path, capfd):
    """A rule that passes its job less than the stage reads (here prune_filters without
    ``finetune``, which the run's budget needs) fails in one line naming the setting, instead
    of running on a schema default, and writes nothing."""
    from types import SimpleNamespace

    from idap.stages.registry import job_settings
    from idap.workflow import job
    from idap.workflow.compress import run_workflow_job

    cfg = env["cfg"]
    given = job_settings("prune_filters", cfg)
    assert given.pop("finetune") == {"epochs": cfg["finetune"]["epochs"]}  # what it reads
    out = tmp_path / "r0.5/prune_filters"
    sm = SimpleNamespace(
        rule="prune_filters",
        config={},
        log=[str(tmp_path / "job.log")],
        threads=1,
        wildcards=SimpleNamespace(dataset="digits", method="idap", target="0.5"),
        input=SimpleNamespace(model=str(env["dense"]), dense=str(env["dense"]), get=lambda k: None),
        output=SimpleNamespace(model=str(out / "model.json"), dynamics=str(out / "dyn.csv")),
        params=SimpleNamespace(settings=json.dumps(given)),
    )
    with pytest.raises(SystemExit), job(sm, "prune_filters"):
        run_workflow_job(sm, "prune_filters")
    line = capfd.readouterr().err.strip().splitlines()[-1]
    expect(
        line,
        "prune_filters read settings.finetune, which its rule did not pass (add it to the "
        "stage's reads in idap/stages/registry.py)",
    )
    assert not out.exists()
    # given the section, the same job runs
    sm.params.settings = json.dumps(job_settings("prune_filters", cfg))
    with job(sm, "prune_filters"):
        run_workflow_job(sm, "prune_filters")
    assert (out / "model.json").is_file()
