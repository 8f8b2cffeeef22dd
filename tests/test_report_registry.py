"""Every report is declared once (idap.reporting.registry); its builder, its workflow rule,
its CLI command, the rule ``all``'s targets and the README's table follow from it."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import load_workflow

from idap.core.config import validate_config
from idap.engine.methods import get_method
from idap.reporting.registry import INPUTS, REPORTS, final_files, markdown_table
from idap.stages.registry import STAGES

ROOT = Path(__file__).resolve().parents[1]
ALWAYS = {"tables", "plots", "compare", "pareto"}
GRID = {"datasets": ["digits"], "models": ["resnet_micro"], "methods": ["idap", "l1"]}


@pytest.mark.parametrize("name", list(REPORTS))
def test_each_builder_takes_exactly_what_its_report_declares(name):
    report = REPORTS[name]
    params = inspect.signature(report.function()).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values()), name
    declared = {*report.inputs, *(f"out_{o.name}" for o in report.outputs)}
    declared |= set(report.settings_names)
    assert set(params) == declared
    assert set(report.inputs) <= set(INPUTS)
    for o in report.outputs:
        assert o.caption is None or (ROOT / "report" / o.caption).is_file(), o.caption
        assert o.path.startswith("results/")


def _reports(**cfg) -> set[str]:
    """The reports whose files the rule ``all`` asks for under ``cfg``."""
    files = set(final_files(validate_config(cfg), get_method))
    out = set()
    for name, report in REPORTS.items():
        mine = set(report.files(validate_config(cfg)["grid"]))
        assert not mine & files or mine <= files, name  # all of a report or none
        if mine <= files:
            out.add(name)
    return out


def test_the_config_decides_which_reports_are_final():
    assert _reports(grid=GRID) == ALWAYS
    ablation = {**GRID, "methods": ["idap", "idap_noft", "l1"]}
    assert _reports(grid=ablation) == ALWAYS | {"ablation"}
    one_variant = {**GRID, "methods": ["idap", "l1"]}  # idap alone is no ablation
    assert _reports(grid=one_variant) == ALWAYS
    assert _reports(grid=GRID, prune={"mode": "budget"}) == ALWAYS | {"budget_table"}
    assert _reports(grid=GRID, report={"tuning": True}) == ALWAYS | {"tuning"}
    sparse = {**GRID, "methods": ["idap", "magnitude"]}
    assert _reports(grid=sparse) == ALWAYS | {"sparsity_report"}


def test_a_per_model_report_writes_one_file_per_dataset_and_model():
    grid = validate_config({"grid": {**GRID, "models": ["resnet_micro", "resnet_tiny"]}})["grid"]
    assert REPORTS["pareto"].files(grid) == [
        "results/plots/pareto/digits/resnet_micro.png",
        "results/plots/pareto/digits/resnet_tiny.png",
    ]


def test_the_workflow_declares_each_report_as_registered(tmp_path):
    """The rules Snakemake parses from rules/report.smk: local, the registry's outputs
    (a table one multiext), the grid's inputs, its config reads as params, and ``all``
    asks for exactly the final files."""
    from snakemake.io import strip_wildcard_constraints

    from idap.reporting.registry import input_files

    cfg = {"grid": {**GRID, "methods": ["idap", "idap_noft", "magnitude"]}}
    rules, local = load_workflow(tmp_path, cfg)
    config = validate_config(cfg)
    for name, report in REPORTS.items():
        rule = rules[name]
        assert name in local
        assert set(rule.output.keys()) == {o.name for o in report.outputs}, name
        for o in report.outputs:
            files = list(rule.output[o.name]) if o.exts else [rule.output[o.name]]
            assert [strip_wildcard_constraints(f) for f in files] == o.files(), (name, o.name)
            assert all(f.flags.get("multiext") for f in files) == bool(o.exts)
            # in `snakemake --report`: a table by its .md, under its category and caption
            shown = [f for f in files if f.flags.get("report")]
            assert shown == (files[:1] if o.category else []), (name, o.name)
            if shown and o.caption:
                assert shown[0].flags["report"].caption.endswith(f"report/{o.caption}")
        assert set(rule.input.keys()) == set(report.inputs), name
        if not report.per_model:
            for kind in report.inputs:
                assert list(rule.input[kind]) == input_files(kind, config["grid"]), (name, kind)
        assert set(rule.params.keys()) == {*report.settings_names, "code"}, name
    assert sorted(rules["all"].input) == sorted(final_files(config, get_method))


def _commands() -> set[str]:
    from idap.cli import build_parser

    return set(build_parser()._subparsers._group_actions[0].choices)


def test_every_stage_and_every_report_is_a_command():
    wiring = {"check-targets", "check-config"}  # the target check and the config check
    names = {n.replace("_", "-") for n in (*STAGES, *REPORTS)}
    assert _commands() == names | wiring


def test_a_report_command_passes_its_files_outputs_and_config_reads(tmp_path, monkeypatch):
    from idap.cli import main
    from idap.reporting import compare

    seen = {}
    monkeypatch.setattr(compare, "run", lambda **kw: seen.update(kw))
    settings = '{"report": {"latency_backend": "eager", "reference": "l1"}}'
    argv = ["compare", "--dense-metrics", "d.json", "--run-metrics", "a.json", "b.json"]
    argv += ["--dense-latency", "dl.json", "--run-latency", "al.json", "bl.json"]
    argv += ["--out-comparison", "t/comparison.md", "--out-cost", "t/cost", "--out-runs", "r.csv"]
    assert main([*argv, "--settings", settings]) == 0
    assert seen == {
        "dense_metrics": ["d.json"],
        "run_metrics": ["a.json", "b.json"],
        "dense_latency": ["dl.json"],
        "run_latency": ["al.json", "bl.json"],
        "out_comparison": "t/comparison",  # a table's stem, whether given with .md or not
        "out_cost": "t/cost",
        "out_runs": "r.csv",
        "latency_backend": "eager",
        "reference": "l1",
    }


def test_the_readme_holds_the_registrys_table():
    printed = subprocess.run(
        [sys.executable, "-m", "idap.reporting.registry"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert printed == markdown_table()
    readme = (ROOT / "README.md").read_text()
    # the whole table, once, and nothing appended to it
    assert readme.count(printed.splitlines()[0]) == 1
    before, _, after = readme.partition(printed)
    assert before.endswith("\n\n") and after.startswith("\n"), "the README's table differs"
