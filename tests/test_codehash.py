"""A rule's code hash covers exactly the idap modules its script imports (derived from the
source), so editing a module reruns the rules that run it and nothing else."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from idap.core.codehash import code_hash, import_closure
from idap.stages.registry import COMPRESSION_STAGES, STAGES

ROOT = Path(__file__).resolve().parents[1]
COMPUTE = ("download", "baseline", "prune_filters", "truncate_layers", "finetune", "evaluate")
COMPUTE += ("latency",)
COMPRESSION = ("prune_filters", "truncate_layers", "finetune")


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the package and the scripts, free to edit."""
    shutil.copytree(ROOT / "idap", tmp_path / "idap", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "workflow_scripts", tmp_path / "workflow_scripts")
    return tmp_path


def hashes(root: Path) -> dict[str, str]:
    """Each rule script's hash as rules/common.smk computes it: its import closure plus the
    compression stages it runs (the orchestrator imports those lazily)."""
    scripts = sorted((root / "workflow_scripts").glob("[a-z]*.py"))  # rule scripts, not helpers
    out = {}
    for s in scripts:
        runs = STAGES[s.stem].runs if s.stem in STAGES else ()
        modules = tuple(COMPRESSION_STAGES[r].module for r in runs)
        out[s.stem] = code_hash.__wrapped__(s, root, modules)  # uncached
    return out


def edit(path: Path, text: str = "\n# edited\n") -> None:
    path.write_text(path.read_text() + text)


def test_editing_vbp_reruns_the_compression_stages_only(tree):
    before = hashes(tree)
    edit(tree / "idap/engine/vbp.py")
    after = hashes(tree)
    for stage in COMPRESSION:
        assert after[stage] != before[stage], stage
    for stage in ("download", "baseline", "tables", "plots", "compare", "ablation"):
        assert after[stage] == before[stage], stage


@pytest.mark.parametrize("stage", list(COMPRESSION_STAGES))
def test_editing_a_stage_module_reruns_that_stage_only(tree, stage):
    """Editing idap/stages/finetune.py changes the finetune rule's hash (and budget mode's
    search, which runs every stage), no other compression stage's: so a peer's
    prune_filters job never reruns for an edit of truncation."""
    before = hashes(tree)
    edit(tree / f"idap/stages/{stage}.py")
    after = hashes(tree)
    changed = {s for s in after if after[s] != before[s]}
    assert changed == {stage, "budget_search"}


def test_editing_tables_changes_no_compute_stage(tree):
    before = hashes(tree)
    edit(tree / "idap/reporting/tables.py")
    after = hashes(tree)
    assert after["tables"] != before["tables"]
    for stage in COMPUTE:
        assert after[stage] == before[stage], stage


def test_a_version_bump_changes_no_hash(tree):
    before = hashes(tree)
    init = tree / "idap/__init__.py"
    text = init.read_text()
    assert re.search(r'^__version__ = "', text, re.M)
    init.write_text(re.sub(r'^__version__ = ".*"$', '__version__ = "99.0"', text, flags=re.M))
    assert hashes(tree) == before
    edit(init, "\nX = 1\n")  # any other edit of the package root does count
    assert all(h != before[s] for s, h in hashes(tree).items())


def test_function_level_imports_are_followed(tree):
    # the latency stage imports the artifact loader inside a function
    files = {
        p.relative_to(tree).as_posix()
        for p in import_closure(tree / "workflow_scripts/latency.py", tree)
    }
    assert "idap/models/artifact.py" in files and "idap/stages/latency.py" in files
    assert not any(f.startswith("idap/reporting/") for f in files)


def test_every_rule_hashes_its_own_script():
    """The ``code`` param of each rule is the hash of the script the rule runs; except
    check_targets, which tracks nothing: its rerun would hide the jobs below it from
    Snakemake (rules/check_targets.smk), and the planner checks what its record lacks."""
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0]
            if name == "check_targets":
                assert "\n    params:" not in block
                continue
            script = re.search(r'"\.\./workflow_scripts/(\w+)\.py"', block)
            code = re.search(r'code=code_hash\("(\w+)"\)', block)
            assert script and code and script.group(1) == code.group(1), (smk.name, name)


def test_exactly_the_reports_are_local_rules():
    """A rule that runs a stage of idap/stages/registry.py is a cluster job; every other rule
    (tables, plots, the target check, ``all``) says ``localrule: True`` itself, so no list of
    local rules can miss one."""
    from idap.stages.registry import STAGES

    texts = [*(ROOT / "rules").glob("*.smk"), ROOT / "Snakefile"]
    for smk in texts:
        for block in re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0]
            assert ("\n    localrule: True\n" in block) == (name not in STAGES), (smk.name, name)
    assert "localrules:" not in (ROOT / "Snakefile").read_text()


def test_every_rule_has_its_cli_command():
    """The workflow's rules and the CLI's subcommands are one list: a rule ``x_y`` runs what
    ``idap x-y`` runs (``all`` gathers, it runs nothing)."""
    from idap.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0]
            assert name.replace("_", "-") in commands, (smk.name, name)


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
