"""A rule's code hash covers exactly the idap modules its script imports (derived from the
source), so editing a module reruns the rules that run it and nothing else."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest
from helpers import load_workflow

from idap.core.codehash import code_hash, import_closure
from idap.reporting.registry import REPORTS
from idap.stages.registry import COMPRESSION_STAGES, STAGES

ROOT = Path(__file__).resolve().parents[1]
COMPUTE = ("download", "baseline", "prune_filters", "truncate_layers", "finetune", "evaluate")
COMPUTE += ("latency",)
COMPRESSION = ("prune_filters", "truncate_layers", "finetune")
# the rules that are neither a stage nor a report: they wire, they run no idap stage
WIRING = {"check_targets", "all"}


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """The workflow's rules and local rules, as Snakemake parses the Snakefile."""
    return load_workflow(tmp_path_factory.mktemp("wd"))


@pytest.fixture(scope="module")
def rules(workflow):
    return workflow[0]


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the package and the scripts, free to edit."""
    shutil.copytree(ROOT / "idap", tmp_path / "idap", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "workflow_scripts", tmp_path / "workflow_scripts")
    return tmp_path


def hashes(root: Path, rules: dict) -> dict[str, str]:
    """Each rule's hash of its code as rules/common.smk computes it: its script's import
    closure plus what that script imports lazily (a report's builder, the compression stages
    a stage job runs)."""
    out = {}
    for name, rule in rules.items():
        if name in WIRING:
            continue
        modules = (REPORTS[name].module,) if name in REPORTS else ()
        runs = STAGES[name].runs if name in STAGES else ()
        modules += tuple(COMPRESSION_STAGES[r].module for r in runs)
        script = root / "workflow_scripts" / Path(rule.script).name
        out[name] = code_hash.__wrapped__(script, root, modules)  # uncached
    return out


def test_the_hashes_here_are_the_workflows(rules):
    """The hashes these tests edit are the ``code`` params the workflow gives its rules (no
    plugins in the shipped config), for every rule that is a stage or a report."""
    assert set(rules) == {*STAGES, *REPORTS, *WIRING}
    mine = hashes(ROOT, rules)
    assert set(mine) == set(rules) - WIRING
    for name, h in mine.items():
        assert rules[name].params.code == hashlib.sha256(h.encode()).hexdigest()[:16], name


def edit(path: Path, text: str = "\n# edited\n") -> None:
    path.write_text(path.read_text() + text)


def test_editing_vbp_reruns_the_compression_stages_only(tree, rules):
    before = hashes(tree, rules)
    edit(tree / "idap/engine/vbp.py")
    after = hashes(tree, rules)
    for stage in COMPRESSION:
        assert after[stage] != before[stage], stage
    for stage in ("download", "baseline", "tables", "plots", "compare", "ablation"):
        assert after[stage] == before[stage], stage


@pytest.mark.parametrize("stage", list(COMPRESSION_STAGES))
def test_editing_a_stage_module_reruns_that_stage_only(tree, rules, stage):
    """Editing idap/stages/finetune.py changes the finetune rule's hash (and budget mode's
    search, which runs every stage), no other compression stage's: so a peer's
    prune_filters job never reruns for an edit of truncation."""
    before = hashes(tree, rules)
    edit(tree / f"idap/stages/{stage}.py")
    after = hashes(tree, rules)
    changed = {s for s in after if after[s] != before[s]}
    assert changed == {stage, "budget_search"}


def test_editing_tables_changes_no_compute_stage(tree, rules):
    before = hashes(tree, rules)
    edit(tree / "idap/reporting/tables.py")
    after = hashes(tree, rules)
    assert after["tables"] != before["tables"]
    for stage in COMPUTE:
        assert after[stage] == before[stage], stage


def test_a_version_bump_changes_no_hash(tree, rules):
    before = hashes(tree, rules)
    init = tree / "idap/__init__.py"
    text = init.read_text()
    assert re.search(r'^__version__ = "', text, re.M)
    init.write_text(re.sub(r'^__version__ = ".*"$', '__version__ = "99.0"', text, flags=re.M))
    assert hashes(tree, rules) == before
    edit(init, "\nX = 1\n")  # any other edit of the package root does count
    assert all(h != before[s] for s, h in hashes(tree, rules).items())


def test_function_level_imports_are_followed(tree):
    # the latency stage imports the artifact loader inside a function
    files = {
        p.relative_to(tree).as_posix()
        for p in import_closure(tree / "workflow_scripts/latency.py", tree)
    }
    assert "idap/models/artifact.py" in files and "idap/stages/latency.py" in files
    assert not any(f.startswith("idap/reporting/") for f in files)


def test_every_rule_but_check_targets_tracks_its_code(rules):
    """Every rule that runs a stage or a report hashes its code; check_targets tracks
    nothing: its rerun would hide the jobs below it from Snakemake
    (rules/check_targets.smk), and the planner checks what its record lacks."""
    tracked = {name for name, r in rules.items() if "code" in r.params.keys()}
    assert tracked == set(rules) - WIRING
    assert not rules["check_targets"].params.keys()


def test_every_stage_rule_records_its_time(rules):
    """Each job of a stage writes a Snakemake benchmark beside its log (wall time, memory),
    so a run's cost per stage can be read off its logs."""
    for name in STAGES:
        bench = rules[name].benchmark
        assert bench is not None, name
        assert str(bench).endswith(".bench.tsv") and str(bench).startswith("logs/"), name


def test_exactly_the_reports_are_local_rules(workflow):
    """A rule that runs a stage of idap/stages/registry.py is a cluster job; every other rule
    (the reports, the target check, ``all``) says ``localrule: True`` itself, so no list of
    local rules can miss one."""
    rules, local = workflow
    assert local == set(rules) - set(STAGES)
    assert local >= set(REPORTS)
    assert "localrules:" not in (ROOT / "Snakefile").read_text()


def test_every_rule_has_its_cli_command(rules):
    """The workflow's rules and the CLI's subcommands are one list: a rule ``x_y`` runs what
    ``idap x-y`` runs (``all`` gathers, it runs nothing)."""
    from idap.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    for name in set(rules) - {"all"}:
        assert name.replace("_", "-") in commands, name


def test_check_targets_command_refuses_an_unreachable_target(tmp_path, capsys):
    from idap.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "grid: {models: [resnet_micro], datasets: [digits], methods: [l1], targets: [0.99]}\n"
    )
    out = tmp_path / "targets.json"
    assert main(["check-targets", "--dataset", "digits", "--model", "resnet_micro",
                 "--config", str(cfg), "--out", str(out)]) != 0  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("idap check-targets: error: resnet_micro on digits: l1 cannot reach")
    assert not out.exists()
    cfg.write_text(cfg.read_text().replace("0.99", "0.5"))
    assert main(["check-targets", "--dataset", "digits", "--model", "resnet_micro",
                 "--config", str(cfg), "--out", str(out)]) == 0  # fmt: skip
    assert out.is_file()
