"""Snakemake startup with the SLURM executor plugin installed: the controller-probe stall.

Importing snakemake-executor-plugin-slurm runs `scontrol show config` (to pick a default
status command) whenever `sinfo` is on PATH, and every snakemake call imports every
installed executor plugin to build its command line, local runs included. With a
slurm.conf whose controller does not answer, scontrol retries for about MessageTimeout
(10 s) and every `snakemake` call, even `snakemake --version`, waits that long (the plugin
gives up after 10 s). SLURM_CONF naming a missing file is no cure: scontrol then retries
for 60 s. SLURM_CONF=/dev/null is: scontrol fails at once on the empty file.

Prints the median wall time of `snakemake -n` on the default config (local executor, in
the repository, --nolock: nothing is written), `snakemake --version` and
`scontrol show config` in each state:

  no slurm.conf              SLURM client installed, no /etc/slurm/slurm.conf
  controller running         a reachable slurmctld
  controller down            slurm.conf naming a slurmctld that is not running
  down + SLURM_CONF=/dev/null  the remedy for local runs (docs/cluster.md)

--local-cluster (root, Debian) uses tests/slurm/local_slurm.sh: its cluster for "running",
the same cluster stopped with its /etc/slurm/slurm.conf kept for "down", and leaves it as
it found it. Without it, "running" is measured only if the machine's own SLURM answers, and
"down" uses a scratch slurm.conf naming a controller on a closed local port.

    .venv/bin/python benchmarks/startup.py [--local-cluster] [--repeat 3]

Asserts nothing; prints figures.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLUSTER = ROOT / "tests/slurm/local_slurm.sh"
CLUSTER_DIR = Path(os.environ.get("IDAP_SLURM_DIR", "/tmp/idap-slurm"))


def env_with(slurm_conf: str | None) -> dict:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    env.pop("SLURM_CONF", None)
    if slurm_conf is not None:
        env["SLURM_CONF"] = slurm_conf
    return env


def timed(cmd: list[str], env: dict, repeat: int) -> tuple[float, int]:
    """Median wall seconds of cmd over `repeat` runs, and the last exit status."""
    times, rc = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True).returncode
        times.append(time.perf_counter() - t0)
    return statistics.median(times), rc


def measure(label: str, slurm_conf: str | None, repeat: int) -> None:
    env = env_with(slurm_conf)
    snake = str(BIN / "snakemake")
    dry, dry_rc = timed([snake, "-n", "--nolock"], env, repeat)
    version, _ = timed([snake, "--version"], env, repeat)
    probe, probe_rc = timed(["scontrol", "show", "config"], env, 1)
    note = "" if dry_rc == 0 else f"  (snakemake -n exited {dry_rc})"
    print(
        f"{label:<32} {dry:8.2f} {version:8.2f} {probe:9.2f}"
        f" {'ok' if probe_rc == 0 else 'fails':>7}{note}",
        flush=True,
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scratch_conf(directory: Path) -> str:
    """A minimal slurm.conf whose controller is on a local port nobody listens on."""
    host = socket.gethostname().split(".")[0]
    conf = directory / "slurm.conf"
    conf.write_text(
        "ClusterName=unreachable\n"
        f"SlurmctldHost={host}(127.0.0.1)\n"
        f"SlurmctldPort={closed_port()}\n"
        f"NodeName={host} CPUs=1 State=UNKNOWN\n"
        f"PartitionName=debug Nodes={host} Default=YES State=UP\n"
    )
    return str(conf)


def cluster(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, IDAP_SLURM_DIR=str(CLUSTER_DIR))
    return subprocess.run(["bash", str(CLUSTER), *args], env=env, capture_output=True, text=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--local-cluster", action="store_true", help="use tests/slurm/local_slurm.sh")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    args = ap.parse_args()

    load = os.getloadavg()[0]
    print(f"# {os.cpu_count()} CPUs, load average {load:.2f}; median of {args.repeat} runs")
    if shutil.which("sinfo") is None:
        print("# SLURM client (sinfo) not installed: the plugin skips its probe, no stall")
        measure("no SLURM client", None, args.repeat)
        return
    header = f"{'state':<32} {'-n [s]':>8} {'--version':>8} {'scontrol':>9} {'probe':>7}"
    print(header)
    default_conf = Path("/etc/slurm/slurm.conf")

    if args.local_cluster:
        CLUSTER_DIR.mkdir(parents=True, exist_ok=True)
        lock = open(CLUSTER_DIR / "session.lock", "w")  # the lock tests/test_slurm.py takes
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit(f"a test session is using the local SLURM in {CLUSTER_DIR}; try later")
        was_up = cluster("status").returncode == 0
        cluster("stop")  # also unlinks /etc/slurm/slurm.conf
        try:
            if default_conf.exists():
                print(f"{'no slurm.conf':<32} (skipped: {default_conf} exists)")
            else:
                measure("no slurm.conf", None, args.repeat)
            up = cluster("start")
            if up.returncode != 0:
                sys.exit(f"local cluster did not start:\n{up.stderr}")
            measure("controller running", None, args.repeat)
            cluster("stop", "--keep-conf")
            measure("controller down", None, args.repeat)
            measure("down + SLURM_CONF=/dev/null", "/dev/null", args.repeat)
        finally:  # leave the cluster as it was found
            if was_up:
                cluster("start")
            else:
                cluster("stop")
        return

    if default_conf.exists():
        print(f"{'no slurm.conf':<32} (skipped: {default_conf} exists)")
    else:
        measure("no slurm.conf", None, args.repeat)
    if subprocess.run(["scontrol", "ping"], env=env_with(None), capture_output=True).returncode:
        print(f"{'controller running':<32} (no reachable controller; try --local-cluster)")
    else:
        measure("controller running", None, args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        measure("controller down", scratch_conf(Path(tmp)), args.repeat)
    measure("down + SLURM_CONF=/dev/null", "/dev/null", args.repeat)


if __name__ == "__main__":
    main()
