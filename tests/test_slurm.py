"""The workflow through a real SLURM: profiles/slurm on a single-node cluster on this machine.

tests/slurm/local_slurm.sh brings up slurmctld, slurmd, slurmdbd (+ MariaDB, for `sacct`)
and munge, with four fake GPUs as GRES, installing the Debian packages when missing. The
tiny workflow (digits, resnet_micro, two methods) then runs twice at once: through
`snakemake --executor slurm --profile <copy of profiles/slurm>` and locally with
`--cores 2`. The test checks that every non-local job went through SLURM (sacct), that the
GPU rules asked for and got a GPU, and that the results are those of the local run.
Two quick tests need no cluster: the profile's retry escalation (a dry run at attempt 3),
and that the profile covers every GPU rule with that rule's own base memory and runtime.

The cluster test needs root on Debian/Ubuntu (apt-get); it is skipped otherwise, and with
IDAP_SKIP_SLURM=1.
"""

import fcntl
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLUSTER = ROOT / "tests/slurm/local_slurm.sh"
PROFILE = ROOT / "profiles/slurm/profile.yaml"
SLURM_DIR = Path(os.environ.get("IDAP_SLURM_DIR", "/tmp/idap-slurm"))
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")

# The placeholders a site edits in profiles/slurm/profile.yaml, and what this cluster has.
PLACEHOLDERS = {
    "your_account": "root",  # slurmdbd creates the `root` account itself
    "your_cpu_partition": "debug",
    "your_gpu_partition": "gpu",
}

# tests/test_workflow.py's tiny grid, lighter still (IDAP++ alone: it runs both compression
# rules; one baseline epoch on 640 training images, one latency batch size), with `auto`
# devices: the GPU rules then ask SLURM for a GPU (rules/common.smk: gpus()) while
# computing on the CPU, as no CUDA device is here.
TINY = {
    "seed": 0,
    "device": "auto",
    "grid": {
        "datasets": ["digits"],
        "models": ["resnet_micro"],
        "methods": ["idap"],
        "targets": [0.6],
    },
    "data": {"batch_size": 64, "eval_batch_size": 256, "val_fraction": 0.15, "train_subset": 640},
    "baseline": {"epochs": 1, "lr": 0.05},
    "prune": {"steps": 2, "calib_batches": 2, "bn_recalib_batches": 4, "recovery_iters": 4},
    "truncate": {"recovery_iters": 4, "block_tolerance": 100.0, "max_added_drop": 100.0},
    "finetune": {"epochs": 1},
    "latency": {"device": "auto", "batch_sizes": [1], "warmup": 2, "min_run_time": 0.05},
}

# Wall-clock fields: the only ones allowed to differ between the SLURM and the local run.
TIMING_KEYS = {"wall_s", "compress_wall_s"}
RUN_TIMEOUT_S = 540
# Both runs use one thread a job (same results either way, the runs just have to agree):
# five or six concurrent jobs with two torch threads each crawl on a 2-core machine.
ONE_THREAD = ("--max-threads", "1")


def skip_reason() -> str | None:
    if os.environ.get("IDAP_SKIP_SLURM") == "1":
        return "IDAP_SKIP_SLURM=1"
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "a local SLURM cluster needs root (daemons, apt-get)"
    if not shutil.which("apt-get") or not Path("/etc/debian_version").exists():
        return "the local SLURM cluster is installed from Debian packages (apt-get)"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return 'snakemake-executor-plugin-slurm missing: pip install -e ".[workflow]"'
    ours = SLURM_DIR / "etc/slurm.conf"
    if SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink():
        if not (SYSTEM_CONF.is_symlink() and Path(os.readlink(SYSTEM_CONF)) == ours):
            return f"{SYSTEM_CONF} belongs to another SLURM set-up; not replacing it"
    return None


def cluster(action: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, IDAP_SLURM_DIR=str(SLURM_DIR))
    return subprocess.run(
        ["bash", str(CLUSTER), action, *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node SLURM for the session. Daemons this fixture started are
    stopped afterwards; a cluster that was already up is left running."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    SLURM_DIR.mkdir(parents=True, exist_ok=True)
    lock = open(SLURM_DIR / "session.lock", "w")  # held until the session ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        pytest.skip(f"another test session is using the local SLURM in {SLURM_DIR}")
    was_up = cluster("status").returncode == 0
    t0 = time.monotonic()
    up = cluster("start")
    try:
        if up.returncode != 0:
            if not was_up:
                cluster("stop")  # whatever did start, and the /etc/slurm/slurm.conf link
            pytest.fail(f"local SLURM did not come up:\n{up.stdout}\n{up.stderr[-4000:]}")
        yield {"start_s": time.monotonic() - t0}
        if not was_up:
            down = cluster("stop")
            assert down.returncode == 0, down.stderr
    finally:
        lock.close()


def client_env() -> dict:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    # Clients (and srun inside jobs, which cannot see SLURM_CONF) read /etc/slurm/slurm.conf.
    env.pop("SLURM_CONF", None)
    return env


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [
        str(BIN / "snakemake"),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        *args,
    ]


def run(cmd: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run cmd in its own process group; on timeout kill the group (a SLURM snakemake
    ignores SIGTERM while it waits for jobs)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=client_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"timed out after {RUN_TIMEOUT_S}s: {cmd}\n{out[-6000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, ""), time.monotonic() - t0


def workdir(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    (base / "config.yaml").write_text(yaml.safe_dump(TINY))
    return base


def site_profile(dest: Path) -> Path:
    """profiles/slurm with its placeholders filled in, as docs/cluster.md tells a site to."""
    text = PROFILE.read_text()
    for placeholder, value in PLACEHOLDERS.items():
        assert placeholder in text, f"{placeholder} is no longer in {PROFILE}"
        text = text.replace(f'"{placeholder}"', f'"{value}"')
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "profile.yaml").write_text(text)
    return dest


def jobs_from_log(log: str) -> dict[int, dict]:
    """Snakemake jobid -> rule, local?, resources and SLURM job IDs, from a run's output."""
    jobs: dict[int, dict] = {}
    current = None
    for line in log.splitlines():
        if m := re.match(r"^(localrule|rule) (\w+):$", line):
            current = {"rule": m.group(2), "local": m.group(1) == "localrule", "slurm_ids": []}
        elif current is not None and (m := re.match(r"^\s+jobid: (\d+)$", line)):
            jobs.setdefault(int(m.group(1)), current)
            current = jobs[int(m.group(1))]
        elif current is not None and (m := re.match(r"^\s+resources: (.*)$", line)):
            current.setdefault("resources", m.group(1))
        elif m := re.match(r"^Job (\d+) has been submitted with SLURM jobid (\d+)", line):
            jobs[int(m.group(1))]["slurm_ids"].append(m.group(2))
    return jobs


def asks_gpu(resources: str) -> bool:
    m = re.search(r"\bgpu=(\d+)", resources)
    return bool(m and int(m.group(1)) > 0)


def node_gpus() -> int:
    """GPUs the test cluster's one node has (sinfo's generic resources, e.g. gpu:4)."""
    out = subprocess.run(
        ["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, env=client_env(), check=True
    )
    return int(out.stdout.strip().split(":")[-1].split("(")[0])


def sacct(ids: list[str]) -> dict[str, dict]:
    """sacct rows (allocations only) for the given job IDs, once all are finished."""
    fields = ["JobIDRaw", "JobName", "Partition", "State", "AllocTRES", "ReqTRES", "Comment"]
    cmd = ["sacct", "-X", "--parsable2", "--noheader", "--format=" + ",".join(fields)]
    cmd += ["-j", ",".join(ids)]
    rows: dict[str, dict] = {}
    for _ in range(60):  # slurmctld hands finished jobs to slurmdbd asynchronously
        out = subprocess.run(cmd, capture_output=True, text=True, env=client_env(), check=True)
        parsed = [dict(zip(fields, x.split("|"), strict=True)) for x in out.stdout.splitlines()]
        rows = {r["JobIDRaw"]: r for r in parsed}
        if set(ids) <= set(rows) and all(r["State"] == "COMPLETED" for r in rows.values()):
            break
        time.sleep(0.5)
    return rows


def comparable(path: Path) -> dict:
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if k not in TIMING_KEYS}


@pytest.mark.slow
def test_workflow_through_slurm_matches_local_run(slurm_cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("slurm")
    on_slurm, local = workdir(base / "slurm"), workdir(base / "local")
    profile = site_profile(base / "profile")

    # The local reference run (up to the metrics) shares the two cores with the SLURM run
    # and fills the time the SLURM run spends waiting for status checks.
    local_proc = subprocess.Popen(
        snakemake_cmd(local, "--cores", "2", "--until", "evaluate", *ONE_THREAD),
        cwd=local,
        env=client_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        res, wall = run(
            snakemake_cmd(
                on_slurm,
                "--executor",
                "slurm",
                "--profile",
                str(profile),
                "--jobs",
                "6",
                "--slurm-init-seconds-before-status-checks",
                "1",
                *ONE_THREAD,
            ),
            on_slurm,
        )
        local_out, _ = local_proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if local_proc.poll() is None:
            os.killpg(local_proc.pid, signal.SIGKILL)
            local_proc.wait()
    (base / "slurm.log").write_text(res.stdout)
    assert res.returncode == 0, f"SLURM run failed:\n{res.stdout[-8000:]}"
    assert local_proc.returncode == 0, f"local run failed:\n{local_out[-6000:]}"

    # (a) every non-local job went through SLURM, and sacct knows each submission
    jobs = jobs_from_log(res.stdout)
    remote = {j: info for j, info in jobs.items() if not info["local"]}
    assert remote and all(info["slurm_ids"] for info in remote.values()), remote
    assert all(not info["slurm_ids"] for info in jobs.values() if info["local"])
    ids = [i for info in remote.values() for i in info["slurm_ids"]]
    rows = sacct(ids)
    assert set(ids) <= set(rows), f"sacct lacks {set(ids) - set(rows)}"
    assert len(rows) >= len(remote)
    for info in remote.values():
        row = rows[info["slurm_ids"][-1]]
        assert row["State"] == "COMPLETED", row
        assert row["Comment"].startswith(f"rule_{info['rule']}"), row

    # (b) the GPU rules asked SLURM for a GPU, got one, and ran in the GPU partition
    gpu_jobs = [info for info in remote.values() if asks_gpu(info["resources"])]
    assert {i["rule"] for i in gpu_jobs} >= {"baseline", "prune_filters", "finetune", "evaluate"}
    for info in remote.values():
        row = rows[info["slurm_ids"][-1]]
        if asks_gpu(info["resources"]):
            assert "gres/gpu" in row["AllocTRES"] and "gres/gpu" in row["ReqTRES"], row
            assert row["Partition"] == PLACEHOLDERS["your_gpu_partition"], row
            if info["rule"] == "latency":  # slurm_extra --exclusive: every GPU of the node
                assert f"gres/gpu={node_gpus()}" in row["AllocTRES"], row
            else:  # one GPU, the node shared
                assert "gres/gpu=1" in row["AllocTRES"], row
        else:
            assert "gres/gpu" not in row["AllocTRES"], row
            assert row["Partition"] == PLACEHOLDERS["your_cpu_partition"], row

    # (c) same results as the local run: bit-identical, not within a tolerance (CPU, same
    # seed and thread count); only wall-clock timings may differ
    assert (on_slurm / "results/tables/main.md").exists()
    got = sorted(p.relative_to(on_slurm) for p in (on_slurm / "results").rglob("metrics.json"))
    want = sorted(p.relative_to(local) for p in (local / "results").rglob("metrics.json"))
    assert got == want and len(got) == 2, (got, want)  # dense and IDAP++
    for rel in got:
        assert comparable(on_slurm / rel) == comparable(local / rel), rel
    for rel in sorted(p.relative_to(local) for p in (local / "results").rglob("model.json")):
        assert comparable(on_slurm / rel) == comparable(local / rel), rel

    print(
        f"\nSLURM: cluster up in {slurm_cluster['start_s']:.1f}s, {len(ids)} jobs submitted"
        f" ({len(gpu_jobs)} with a GPU), workflow {wall:.0f}s"
    )


def test_profile_escalates_memory_and_runtime_per_attempt(tmp_path):
    """A retried job asks for rule value x attempt (dry run at attempt 3; no cluster)."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip('snakemake-executor-plugin-slurm missing: pip install -e ".[workflow]"')
    wd = workdir(tmp_path / "wd")
    profile = site_profile(tmp_path / "profile")
    cmd = snakemake_cmd(wd, "--profile", str(profile), "-n", "--attempt", "3")
    env = client_env()
    env["SLURM_CONF"] = "/dev/null"  # no controller needed (and no startup wait for one)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=wd, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs = jobs_from_log(out.stdout + out.stderr)
    seen = {info["rule"]: info["resources"] for info in jobs.values()}
    # rules/baseline.smk: mem_mb=8000, runtime=240; rules/download.smk: 4000, 60
    assert "mem_mb=24000" in seen["baseline"] and "runtime=720" in seen["baseline"], seen
    assert "mem_mb=12000" in seen["download"] and "runtime=180" in seen["download"], seen
    assert "slurm_partition=gpu" in seen["baseline"] and "gpu=1" in seen["baseline"]
    assert "slurm_account=root" in seen["download"]


def test_profile_covers_the_gpu_rules_with_the_rules_own_values():
    """Every rule that may take a GPU has a GPU partition in profiles/slurm, and each
    `N * attempt` there starts from the rule's own mem_mb / runtime (no cluster needed)."""
    profile = yaml.safe_load(PROFILE.read_text())
    per_rule = profile["set-resources"]
    rules = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0].strip()
            rules[name] = {
                key: re.search(rf"^\s+{key}=(.+?),?$", block, flags=re.M)
                for key in ("gpu", "mem_mb", "runtime")
            }
    gpu_rules = {n for n, r in rules.items() if r["gpu"] and "gpus(" in r["gpu"].group(1)}
    assert gpu_rules, "no rule asks for a GPU any more?"
    for name in sorted(gpu_rules):
        assert per_rule.get(name, {}).get("slurm_partition") == "your_gpu_partition", name
    for name, values in per_rule.items():
        assert name in rules, f"profiles/slurm names a rule that does not exist: {name}"
        for key in ("mem_mb", "runtime"):
            if key in values:
                base = re.fullmatch(r"(\d+) \* attempt", str(values[key]))
                assert base, (name, key, values[key])
                assert rules[name][key], f"rule {name} declares no {key}"
                assert base.group(1) == rules[name][key].group(1).strip(), (name, key)
