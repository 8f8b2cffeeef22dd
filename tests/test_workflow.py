"""The real Snakemake workflow on a tiny config (sklearn digits, one epoch), end to end."""

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import SNAKEMAKE_CORES

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {
    "seed": 0,
    # the example plugin's own method runs beside IDAP++ and L1 (docs/own_methods.md)
    "plugins": [str(ROOT / "examples/my_method.py")],
    "grid": {
        "datasets": ["digits"],
        "models": ["resnet_micro"],
        "methods": ["idap", "l1", "act_mean"],
        "targets": [0.6],
    },
    "data": {"batch_size": 64, "eval_batch_size": 256, "val_fraction": 0.15},
    "baseline": {"epochs": 2, "lr": 0.05},
    "prune": {"steps": 2, "calib_batches": 2, "bn_recalib_batches": 4, "recovery_iters": 4},
    # the paper's rule with no bound: every tried removal is accepted, so each IDAP++ variant
    # shows its truncation rows (the default, equal_macs, may keep filter branches instead)
    "truncate": {
        "acceptance": "paper",
        "recovery_iters": 4,
        "block_tolerance": 100.0,
        "max_added_drop": 100.0,
    },
    "finetune": {"epochs": 1},
    "latency": {"batch_sizes": [1, 8], "warmup": 2, "min_run_time": 0.05, "rounds": 2},
}


def clean_env() -> dict:
    """No virtual environment on PATH: jobs must not depend on finding ``idap`` there."""
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    return dict(env, PATH="/usr/bin:/bin", HF_HUB_OFFLINE="1")


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = clean_env()
    cmd = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        *SNAKEMAKE_CORES,
        *args,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}")
    return res


def write_config(workdir: Path, cfg: dict) -> Path:
    p = workdir / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def planned_rules(output: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run."""
    counts = {}
    for line in output.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)\s*$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("wf")
    cfg = write_config(wd, TINY)
    snakemake(wd, "--configfile", str(cfg))
    return wd, cfg


@pytest.mark.slow
def test_workflow_end_to_end(finished_run):
    wd, _ = finished_run
    res = wd / "results"
    for name in ("main", "dynamics", "latency"):
        for ext in ("md", "csv", "tex"):
            assert (res / "tables" / f"{name}.{ext}").stat().st_size > 0
    assert (res / "plots" / "dynamics.png").stat().st_size > 1000
    dense = json.loads((res / "digits/resnet_micro/s0/dense/metrics.json").read_text())
    for method in TINY["grid"]["methods"]:
        m = json.loads((res / f"digits/resnet_micro/s0/{method}/r0.6/metrics.json").read_text())
        # every method lands on the MAC target (within 1%, from below)
        reduction = 1 - m["gmacs"] / dense["gmacs"]
        assert 0.6 <= reduction <= 0.6 + 0.01 * 0.4 + 1e-9, (method, reduction)
        assert 0 <= m["test_acc1"] <= 100 and m["deviation_mean"] >= 0
        run = res / f"digits/resnet_micro/s0/{method}/r0.6"
        lat = json.loads((run / "latency.json").read_text())
        assert lat["results"][0]["latency_ms_median"] > 0
        # the ONNX file the user takes away is the one timed, checked against eager
        assert lat["onnx"]["bytes"] == (run / "model.onnx").stat().st_size > 0
        assert lat["onnx"]["max_abs_diff_vs_eager"] < 1e-3
    main = (res / "tables" / "main.md").read_text()
    assert "IDAP" in main or "idap" in main
    for name in ("comparison", "cost"):
        assert (res / "tables" / f"{name}.md").stat().st_size > 0
    assert (res / "plots" / "pareto" / "digits" / "resnet_micro.png").stat().st_size > 1000
    dyn = (res / "digits/resnet_micro/s0/idap/r0.6/finetune/dynamics.csv").read_text().splitlines()
    stages = [line.split(",")[1] for line in dyn[1:]]
    assert stages[0] == "baseline" and stages[-1] == "final" and stages.count("filter") >= 2
    assert not list(wd.rglob("*.tmp")), "a temporary file was left behind"
    # logs live outside results/
    assert (wd / "logs/digits/resnet_micro/s0/idap/r0.6/prune_filters.log").exists()


@pytest.mark.slow
def test_second_run_does_nothing(finished_run):
    wd, cfg = finished_run
    out = snakemake(wd, "--configfile", str(cfg))
    assert "Nothing to be done" in out.stdout + out.stderr


@pytest.mark.slow
def test_editing_a_stage_module_plans_that_stage_and_its_dependents(finished_run, tmp_path):
    """The finished run planned again with a copy of the checkout whose stage module was
    edited: idap/stages/finetune.py replans every fine-tune and what reads it, nothing
    before; idap/stages/truncate_layers.py replans IDAP++'s truncation, no job of a peer."""
    wd, cfg = finished_run
    copy = tmp_path / "checkout"
    copy.mkdir()
    for name in ("Snakefile", "rules", "workflow_scripts", "idap", "config", "envs", "report"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, copy / name)

    def plan() -> dict[str, int]:
        env = clean_env()
        cmd = [str(BIN / "snakemake"), "-n", "--snakefile", str(copy / "Snakefile")]
        cmd += ["--directory", str(wd), "--cores", "1", "--configfile", str(cfg)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=wd)
        assert res.returncode == 0, res.stderr[-3000:]
        return planned_rules(res.stdout + res.stderr)

    assert plan() == {}  # the same code in another place: nothing to do
    n = len(TINY["grid"]["methods"])
    after = {"evaluate": n, "latency": n, "tables": 1, "plots": 1, "compare": 1, "pareto": 1}
    stage = copy / "idap/stages/finetune.py"
    stage.write_text(stage.read_text() + "\n# edited\n")
    assert plan() == {"finetune": n, **after, "all": 1}
    shutil.copy(ROOT / "idap/stages/finetune.py", stage)
    stage = copy / "idap/stages/truncate_layers.py"
    stage.write_text(stage.read_text() + "\n# edited\n")
    one = {k: 1 if k in ("evaluate", "latency") else v for k, v in after.items()}
    assert plan() == {"truncate_layers": 1, "finetune": 1, **one, "all": 1}  # IDAP++ only


@pytest.mark.slow
def test_finetune_setting_reruns_only_finetune_and_descendants(finished_run):
    wd, _ = finished_run
    cfg = json.loads(json.dumps(TINY))
    cfg["finetune"]["lr"] = 0.02
    path = wd / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = snakemake(wd, "-n", "--configfile", str(path))
    rules = planned_rules(out.stdout + out.stderr)
    n = len(TINY["grid"]["methods"])
    assert rules == {
        "finetune": n,
        "evaluate": n,
        "latency": n,
        "tables": 1,
        "plots": 1,
        "compare": 1,
        "pareto": 1,
        "all": 1,
    }, rules
    # the fine-tune's epochs are part of the run's budget, which every compression stage
    # spends (truncation trials, gap steps): they rerun too
    cfg["finetune"]["epochs"] = 2
    path.write_text(yaml.safe_dump(cfg))
    rules = planned_rules(snakemake(wd, "-n", "--configfile", str(path)).stdout)
    assert rules["prune_filters"] == n and rules["truncate_layers"] == 1, rules
    assert "baseline" not in rules, rules


@pytest.mark.slow
def test_seeds_plan_one_full_run_each(finished_run):
    wd, _ = finished_run
    cfg = json.loads(json.dumps(TINY))
    cfg["grid"]["seeds"] = [0, 1]
    path = wd / "seeds.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = snakemake(wd, "-n", "--configfile", str(path))
    rules = planned_rules(out.stdout + out.stderr)
    # seed 0 is done: seed 1 needs its own dense model and both methods' runs
    n = len(TINY["grid"]["methods"])
    assert rules["baseline"] == 1 and rules["prune_filters"] == n and rules["finetune"] == n


@pytest.mark.slow
def test_a_grid_change_plans_its_new_runs_in_the_same_invocation(finished_run):
    # a method and a target added: their runs are planned at once (the target check does
    # not rerun: before, its rerun hid every missing job and the run did nothing else)
    wd, _ = finished_run
    cfg = json.loads(json.dumps(TINY))
    cfg["grid"]["methods"] = ["idap", "l1", "taylor"]
    cfg["grid"]["targets"] = [0.6, 0.5]
    path = wd / "grown.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = snakemake(wd, "-n", "--configfile", str(path))
    rules = planned_rules(out.stdout + out.stderr)
    assert "check_targets" not in rules and "baseline" not in rules, rules
    assert rules["prune_filters"] == 4 and rules["finetune"] == 4, rules  # 6 runs, 2 done
    # an unreachable target added later is refused by the planner, before any job
    cfg["grid"]["targets"] = [0.6, 0.99]
    path.write_text(yaml.safe_dump(cfg))
    out = snakemake(wd, "-n", "--configfile", str(path), check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "taylor cannot reach a -99.0% MAC target" in text, text[-2000:]
    assert "idap cannot reach a -99.0% MAC target" in text  # every refusal at once


@pytest.mark.slow
def test_bad_config_fails_before_any_job(tmp_path):
    cfg = json.loads(json.dumps(TINY))
    cfg["prune"]["stpes"] = 3
    path = write_config(tmp_path, cfg)
    out = snakemake(tmp_path, "--configfile", str(path), check=False)
    assert out.returncode != 0
    assert "prune: unknown key 'stpes'" in out.stderr + out.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("models", ["resnet_9000"], "grid.models: unknown model 'resnet_9000'; valid: "),
        ("datasets", ["imagenet_x"], "grid.datasets: unknown dataset 'imagenet_x'; valid: "),
        ("methods", ["oracle"], "grid.methods: unknown method 'oracle'; valid: "),
    ],
)
def test_unknown_names_fail_before_any_job(tmp_path, key, value, needle):
    cfg = json.loads(json.dumps(TINY))
    cfg["grid"][key] = value
    out = snakemake(tmp_path, "--configfile", str(write_config(tmp_path, cfg)), check=False)
    assert out.returncode != 0 and needle in out.stderr + out.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_unreachable_target_fails_before_the_dense_training(tmp_path):
    cfg = json.loads(json.dumps(TINY))
    cfg["grid"]["targets"] = [0.6, 0.99]
    out = snakemake(tmp_path, "--configfile", str(write_config(tmp_path, cfg)), check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert re.search(
        r"idap check_targets: error: resnet_micro on digits: idap cannot reach a -99\.0% MAC "
        r"target: every channel above the per-layer floors removed leaves -[\d.]+% \([\d.]+ M "
        r"MACs > [\d.]+ M MACs\); refused before step 1",
        text,
    ), text[-3000:]
    assert "l1 cannot reach a -99.0% MAC target" in text  # every refusal named at once
    assert not (tmp_path / "logs/digits/resnet_micro/s0/dense/baseline.log").exists()
    assert not (tmp_path / "results/digits/resnet_micro/s0/dense").exists()


@pytest.mark.slow
def test_readme_own_model_and_dataset_example_runs_end_to_end(tmp_path):
    """The README's "Your own model and dataset" command, as written, on its example plugin
    (a model and a dataset registered from outside the package)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Your own model and dataset", 1)[1].split("\n## ", 1)[0]
    cmd = re.search(r"```(?:bash|sh)?\n(\S*snakemake [^\n]+)\n```", section).group(1)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    argv = shlex.split(cmd)[1:]
    snakemake(tmp_path, *argv)
    res = tmp_path / "results"
    dense = json.loads((res / "digits_0to4/plain_cnn/s0/dense/metrics.json").read_text())
    m = json.loads((res / "digits_0to4/plain_cnn/s0/idap/r0.5/metrics.json").read_text())
    assert 1 - m["gmacs"] / dense["gmacs"] >= 0.5 - 1e-9 and m["test_acc1"] > 20  # 5 classes
    assert "plain_cnn" in (res / "tables/main.md").read_text()


@pytest.mark.slow
def test_budget_mode_runs_one_search_job_per_run(tmp_path):
    cfg = json.loads(json.dumps(TINY))
    cfg["grid"]["methods"] = ["l1"]
    cfg["prune"].update(mode="budget", max_drop=1.0, budget_probes=3, budget_deltas=[5.0])
    # the budget table's latency column, on one backend and batch: all this test times
    cfg["latency"] = {**cfg["latency"], "backends": ["eager"], "batch_sizes": [1]}
    cfg["report"] = {"latency_backend": "eager"}
    path = write_config(tmp_path, cfg)
    rules = planned_rules(snakemake(tmp_path, "-n", "--configfile", str(path)).stdout)
    assert rules["budget_search"] == 1 and "prune_filters" not in rules and "finetune" not in rules
    snakemake(tmp_path, "--configfile", str(path))
    run = tmp_path / "results/digits/resnet_micro/s0/l1/r0.6"
    dyn = list(csv.DictReader((run / "finetune/dynamics.csv").open()))
    metrics = json.loads((run / "metrics.json").read_text())
    # Δ = 5 pp searched too, sharing the probes: at most 3 runs each, none run twice
    probes = sum(r["stage"] == "probe" for r in dyn)
    assert 3 <= probes == metrics["budget_probes"] <= 6 and metrics["budget_stop"]
    assert set(metrics["budget_by_delta"]) == {"1", "5"}
    probe_walls = sum(float(r["wall_s"]) for r in dyn if r["stage"] == "probe")
    assert metrics["budget_wall_s"] == pytest.approx(probe_walls, abs=0.01 * probes)
    assert metrics["budget_by_delta"]["5"]["target"] >= metrics["budget_by_delta"]["1"]["target"]
    table = (tmp_path / "results/tables/budget.md").read_text()
    assert re.search(r"\| resnet_micro \| digits +\| l1 +\| +1\.00 \| +60\.00 \|", table), table
    assert re.search(r"\| l1 +\| +5\.00 \| +60\.00 \|", table), table


# The grids that the sparse, ablation and tuning tests read, as one run (one dense model, one
# set of reports, every job once): IDAP++ (the structured method of the sparsity report)
# with two of its ablation variants and a config variant to tune, and a sparse method, with
# the sparse backend timed.
VARIANTS = {"idap_share": {"method": "idap", "prune": {"stage1_share": 1.0}}}
VARIETY = {
    **TINY,
    "grid": {
        **TINY["grid"],
        "methods": ["idap", "idap_share", "idap_reversed", "idap_stage2", "rigl"],
    },
    "variants": VARIANTS,
    "latency": {**TINY["latency"], "backends": ["eager", "sparse_csr"]},
    "report": {"latency_backend": "eager", "tuning": True},
}


@pytest.fixture(scope="module")
def variety_run(tmp_path_factory):
    """(working directory, the rules its dry run planned) of the VARIETY run, finished."""
    wd = tmp_path_factory.mktemp("variety")
    path = write_config(wd, VARIETY)
    plan = planned_rules(snakemake(wd, "-n", "--configfile", str(path)).stdout)
    snakemake(wd, "--configfile", str(path))
    return wd, plan


@pytest.mark.slow
def test_sparse_and_structured_methods_share_one_workflow(variety_run):
    from idap.engine.methods import get_method

    wd, plan = variety_run
    methods = VARIETY["grid"]["methods"]
    stages = [get_method(VARIANTS.get(m, {}).get("method", m)).stages for m in methods]
    # one job per stage of each method (a config variant runs its base method's stages)
    for rule in ("sparsify", "prune_filters", "truncate_layers"):
        assert plan[rule] == sum(rule in s for s in stages), (rule, plan)
    assert plan["sparsify"] == 1 and plan["finetune"] == len(methods), plan
    res = wd / "results/digits/resnet_micro/s0"
    rigl = json.loads((res / "rigl/r0.6/metrics.json").read_text())
    idap = json.loads((res / "idap/r0.6/metrics.json").read_text())
    assert rigl["family"] == "unstructured" and idap["family"] == "structured"
    assert abs(rigl["param_sparsity"] - 0.6) < 1e-3  # the fine-tune kept the zeros
    assert rigl["nz_gmacs"] < rigl["gmacs"] and idap["nz_gmacs"] == idap["gmacs"]
    assert 0 < idap["param_sparsity"] < 1
    lat = json.loads((res / "rigl/r0.6/latency.json").read_text())
    assert {r["backend"] for r in lat["results"]} == {"eager", "sparse_csr"}
    table = (wd / "results/tables/sparsity.md").read_text()
    assert "60% sparsity" in table and "−60% MACs" in table, table
    assert (wd / "results/plots/sparsity.png").stat().st_size > 0


@pytest.mark.slow
def test_ablation_variants_run_in_their_stage_order(variety_run):
    wd, _ = variety_run
    res = wd / "results"
    run = res / "digits/resnet_micro/s0/idap_reversed/r0.6"
    stages = [r.split(",")[1] for r in (run / "finetune/dynamics.csv").read_text().splitlines()[1:]]
    # reversed: truncation rows come before the filter rows
    assert stages.index("truncation") < stages.index("filter")
    assert not (res / "digits/resnet_micro/s0/idap_stage2/r0.6/prune_filters").exists()
    table = (res / "tables/ablation.md").read_text()
    for label in ("full pipeline", "reversed order", "stage 2 only", "stage 1 only"):
        assert label in table
    assert "missing" in table  # variants not in the grid are shown as missing


def _chromium() -> str | None:
    exe = shutil.which("chromium")
    if exe is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            "apt-get update -qq && apt-get install -y -qq chromium", shell=True, capture_output=True
        )
        exe = shutil.which("chromium")
    return exe


@pytest.mark.slow
def test_report_renders_tables_in_chromium(finished_run):
    wd, cfg = finished_run
    snakemake(wd, "--configfile", str(cfg), "--report", "report.html")
    html = wd / "report.html"
    assert html.stat().st_size > 10_000
    exe = _chromium()
    if exe is None:
        pytest.skip("Debian's chromium is not installed and cannot be installed here")
    res = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={wd / 'chromium-profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    dom = res.stdout
    # the rendered page lists the report's categories and result files
    for needle in ("Tables", "main.md", "comparison.md", "Pareto plots"):
        assert needle in dom, needle


def readme_commands() -> list[str]:
    """The commands of the README's "Everyday use" block, comments stripped."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Everyday use", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


@pytest.mark.slow
def test_readme_everyday_commands_run_from_a_clean_environment(finished_run):
    """Each command as written, from a shell without the venv on PATH, on the tiny config
    (``my.yaml`` is it; the others get it appended) against a finished run. The forced
    rerun (``-R``) is planned, not run: the fixture ran those very jobs already."""
    wd, cfg = finished_run
    commands = readme_commands()
    assert len(commands) >= 5 and all(c.startswith(".venv/bin/snakemake") for c in commands)
    for command in commands:
        argv = shlex.split(command.replace("my.yaml", str(cfg)))
        exe = ROOT / argv[0] if (ROOT / argv[0]).exists() else BIN / "snakemake"
        argv = [str(exe), *argv[1:], "--snakefile", str(ROOT / "Snakefile")]
        argv += ["--directory", str(wd)]
        if "--configfile" not in argv:
            argv += ["--configfile", str(cfg)]
        if "-R" in argv:
            argv.append("-n")
        res = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), cwd=wd)
        assert res.returncode == 0, (command, res.stderr[-3000:])
        if "-R" in argv:  # the forced stage for every run, nothing upstream of it
            planned = planned_rules(res.stdout + res.stderr)
            assert planned["finetune"] == len(TINY["grid"]["methods"]), (command, planned)
            assert "baseline" not in planned and "prune_filters" not in planned, planned
    assert (wd / "report.html").stat().st_size > 10_000


def test_the_default_config_is_the_base_from_any_working_directory(tmp_path):
    """With --directory elsewhere and no --configfile the workflow still plans the shipped
    default (config/config.yaml), not the schema's defaults: a relative configfile path was
    read from the working directory and silently skipped there."""
    res = snakemake(tmp_path, "-n")
    planned = res.stdout + res.stderr
    shipped = yaml.safe_load((ROOT / "config/config.yaml").read_text())["grid"]
    assert planned_rules(planned)["baseline"] == len(shipped["datasets"]) * len(shipped["models"])
    for model in shipped["models"]:
        assert f"/{model}/" in planned, model


def job_settings(output: str) -> dict[tuple[str, str], tuple[int, str]]:
    """(rule, method) -> (threads, slurm_extra) of each planned job of a dry run that has a
    method (or, for the latency rule, a variant: a method or dense)."""
    jobs = {}
    for rule, body in re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", output, re.M | re.S):
        method, threads = (
            re.search(r"(?:method|variant)=(\w+)", body),
            re.search(r"threads: (\d+)", body),
        )
        if method and threads:
            extra = re.search(r"slurm_extra=([^,\n]*)", body)
            jobs[(rule, method.group(1))] = (int(threads.group(1)), extra and extra.group(1))
    return jobs


def test_a_job_that_times_its_probes_takes_every_core(tmp_path):
    """Under prune.target_kind latency a compression job times each probe, so it holds every
    local core and, on SLURM, a node of its own, as the latency rule does; a MAC-target job
    keeps its 2 cores and shares its node. --max-threads below --cores would let other jobs
    run beside the timing: the plan says so."""
    cfg = json.loads(json.dumps(TINY))
    cfg["grid"]["methods"] = ["idap", "idap_lat"]
    cfg["variants"] = {"idap_lat": {"method": "idap", "prune": {"target_kind": "latency"}}}
    path = write_config(tmp_path, cfg)
    out = snakemake(tmp_path, "-n", "--configfile", str(path), "--cores", "3", "--max-threads", "3")
    jobs = job_settings(out.stdout)
    for rule in ("prune_filters", "truncate_layers"):
        assert jobs[(rule, "idap_lat")] == (3, "--exclusive"), rule
        assert jobs[(rule, "idap")] == (2, ""), rule
    assert {v for (rule, _), v in jobs.items() if rule == "latency"} == {(3, "--exclusive")}
    assert "timing jobs" not in out.stdout + out.stderr
    capped = snakemake(
        tmp_path, "-n", "--configfile", str(path), "--cores", "3", "--max-threads", "1"
    )
    assert "--max-threads 1 < --cores 3: timing jobs" in capped.stdout + capped.stderr


def test_lint_is_clean(tmp_path):
    shutil.copy(ROOT / "config/config.yaml", tmp_path / "config.yaml")
    out = snakemake(ROOT, "--lint", check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_tuning_chooses_on_one_seed_and_the_choice_reports_on_another(variety_run, tmp_path):
    wd, _ = variety_run
    res = wd / "results"
    # stage 1's last step targets share x 60%: the variant's setting reached its jobs only
    for method, last in (("idap", "target -51.0% MACs"), ("idap_share", "target -60.0% MACs")):
        dyn = (res / f"digits/resnet_micro/s0/{method}/r0.6/finetune/dynamics.csv").read_text()
        assert last in next(r for r in dyn.splitlines() if "stage 1 stopped" in r), dyn
    table = (res / "tables/tuning.md").read_text()
    assert "prune.stage1_share=1.0" in table and "←" in table, table
    tuned = yaml.safe_load((res / "tuning/tuned.yaml").read_text())["variants"]["idap_tuned"]
    assert tuned["tuned_on_seeds"] == [0] and tuned["method"] == "idap"
    # reporting on the tuning seed is refused before any job; on seed 1 it runs (in a
    # directory of its own, leaving the shared run as it was), paired against the tuned
    # variant
    shutil.copy(res / "tuning/tuned.yaml", tmp_path / "tuned.yaml")
    report = json.loads(json.dumps(TINY))
    report["grid"]["methods"] = ["idap_tuned", "l1"]
    # only the comparison table is read here: its latency column on the eager backend alone
    report["report"] = {"reference": "idap_tuned", "latency_backend": "eager"}
    report["latency"] = {**TINY["latency"], "backends": ["eager"], "batch_sizes": [1]}
    path = tmp_path / "report.yaml"
    path.write_text(yaml.safe_dump(report))
    args = ("--configfile", str(path), str(tmp_path / "tuned.yaml"))
    bad = snakemake(tmp_path, *args, check=False)
    assert bad.returncode != 0 and "chosen on seed(s) [0]" in bad.stderr + bad.stdout
    report["grid"]["seeds"] = [1]
    path.write_text(yaml.safe_dump(report))
    snakemake(tmp_path, "results/tables/comparison.md", *args)  # before nargs+ --configfile
    comparison = (tmp_path / "results/tables/comparison.md").read_text()
    assert "Δ vs idap_tuned" in comparison and "| idap_tuned " in comparison, comparison
