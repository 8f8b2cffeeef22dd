"""A compression job killed with SIGKILL resumes at its last finished step and ends exactly
where an uninterrupted run ends (CPU, same seed: bit-identical weights and metrics)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from idap.core.config import validate_config
from idap.core.settings import Settings
from idap.data import prepare_dataset
from idap.stages import baseline

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    wd = tmp_path_factory.mktemp("resume")
    cfg = validate_config(
        {
            "data": {"root": str(wd / "data"), "batch_size": 64, "eval_batch_size": 256},
            "baseline": {"epochs": 1, "lr": 0.05},
            "prune": {
                "steps": 6,
                "calib_batches": 2,
                "bn_recalib_batches": 4,
                "recovery_iters": 25,
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


def prune_cmd(wd: Path, cfg: dict, out: Path) -> list[str]:
    settings = json.dumps({k: cfg[k] for k in ("data", "prune")})
    return [
        str(BIN / "idap"),
        "prune-filters",
        "--dataset",
        "digits",
        "--model",
        str(wd / "dense/model.json"),
        "--method",
        "idap",
        "--target",
        "0.6",
        "--out",
        str(out / "model.json"),
        "--dynamics",
        str(out / "dynamics.csv"),
        "--settings",
        settings,
        "--threads",
        "1",
    ]


def test_killed_job_resumes_and_matches_uninterrupted(setup):
    wd, cfg = setup
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    ref = wd / "ref"
    subprocess.run(prune_cmd(wd, cfg, ref), check=True, env=env, capture_output=True)

    out = wd / "killed"
    state = out / ".checkpoint" / "state.json"
    proc = subprocess.Popen(
        prune_cmd(wd, cfg, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    killed_after = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.exists():
            try:
                step = json.loads(state.read_text())["step"]
            except (json.JSONDecodeError, KeyError):
                step = 0
            if step >= 2:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_after = json.loads(state.read_text())["step"]
                break
        time.sleep(0.02)
    assert killed_after is not None and killed_after >= 2, "job finished before it could be killed"
    assert not (out / "model.json").exists()  # nothing that looks finished

    res = subprocess.run(prune_cmd(wd, cfg, out), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming after step {killed_after}" in res.stdout
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()

    def without_timing(path):
        lines = path.read_text().splitlines()
        header = lines[0].split(",")
        i = header.index("wall_s")
        return [[c for j, c in enumerate(line.split(",")) if j != i] for line in lines]

    assert without_timing(out / "dynamics.csv") == without_timing(ref / "dynamics.csv")
    assert not (out / ".checkpoint").exists()  # cleared after success
