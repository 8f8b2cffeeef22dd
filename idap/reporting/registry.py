"""Every report, declared once: the files it reads, the files it writes, when it is written.

Torch-free (the workflow's planner reads it at every invocation). What follows from it:

- one workflow rule per report, all running one adapter (``rules/report.smk``,
  ``workflow_scripts/report.py``), with its inputs computed from the grid
  (:func:`input_files`) and its config reads as params;
- the targets of the rule ``all`` (:func:`final_files`);
- one CLI command per report: ``idap <name> --<input kind> FILE… --out-<output> PATH``
  (plus ``--config``/``--settings`` for a report that reads the config);
- the README's table of reports (``python -m idap.reporting.registry`` prints it).

A builder is a keyword-only function taking exactly the report's input kinds (lists of
files), ``out_<output>`` (a path; a table's stem, its ``.md``, ``.csv``, ``.tex`` beside
each other) and the last key of each of its config reads.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RESULTS = "results"
TABLE = (".md", ".csv", ".tex")  # what idap.reporting.format.write_table writes


@dataclass(frozen=True)
class InputKind:
    """Files the stages write, one per dense model (``over="dense"``) or per compression run
    (``over="run"``) of the grid, at ``file`` inside that run's directory."""

    name: str
    over: str
    file: str
    help: str


INPUTS: dict[str, InputKind] = {
    k.name: k
    for k in (
        InputKind("dense_metrics", "dense", "metrics.json", "each dense model's metrics.json"),
        InputKind("run_metrics", "run", "metrics.json", "each compression run's metrics.json"),
        # the final fine-tune's dynamics hold every stage's rows before its own
        InputKind(
            "dynamics", "run", "finetune/dynamics.csv", "one dynamics.csv per run, same order"
        ),
        InputKind("dense_latency", "dense", "latency.json", "each dense model's latency.json"),
        InputKind("run_latency", "run", "latency.json", "each compression run's latency.json"),
    )
}


def run_dirs(grid: Mapping, over: str, dataset: str | None = None, model: str | None = None):
    """The grid's dense-model (``over="dense"``) or compression-run directories, optionally
    of one dataset and model."""
    out = []
    for d in grid["datasets"]:
        for m in grid["models"]:
            if dataset not in (None, d) or model not in (None, m):
                continue
            for s in grid["seeds"]:
                base = f"{RESULTS}/{d}/{m}/s{s}"
                if over == "dense":
                    out.append(f"{base}/dense")
                else:
                    out += [f"{base}/{me}/r{t}" for me in grid["methods"] for t in grid["targets"]]
    return out


def input_files(kind: str, grid: Mapping, dataset: str | None = None, model: str | None = None):
    """The files of input ``kind`` the grid's runs write (of one dataset and model if given)."""
    k = INPUTS[kind]
    return [f"{d}/{k.file}" for d in run_dirs(grid, k.over, dataset, model)]


@dataclass(frozen=True)
class Output:
    """One output of a report.

    Attributes:
        name: the rule's output name; the builder's ``out_<name>``; the CLI's ``--out-<name>``.
        path: the file, or a table's stem (``exts`` beside it: one ``multiext`` output); a
            per-model report's path holds ``{dataset}`` and ``{model}``.
        help: what it is (CLI help, README).
        exts: a table's extensions; empty for a single file.
        caption: the Snakemake report's caption (a file in ``report/``); with ``category``
            the output (a table's first file) is in ``snakemake --report``.
        category, subcategory: its place in that report.
    """

    name: str
    path: str
    help: str
    exts: tuple[str, ...] = ()
    caption: str | None = None
    category: str | None = None
    subcategory: str | None = None

    def files(self, **wildcards: str) -> list[str]:
        path = self.path.format(**wildcards) if wildcards else self.path
        return [path + e for e in self.exts] if self.exts else [path]

    def target(self, value: str | Sequence[str]) -> str:
        """The builder's ``out_<name>`` from the rule's files or a CLI path: a table's stem
        (an extension of its own given is dropped), else the path."""
        path = value if isinstance(value, str) else value[0]
        for ext in self.exts:
            path = path.removesuffix(ext)
        return path

    def shown(self) -> str:
        path = self.path.replace("{", "<").replace("}", ">")
        if not self.exts:
            return path
        return f"{path}.{{{','.join(e.lstrip('.') for e in self.exts)}}}"


def _table(name: str, help: str, caption: str | None = "") -> Output:
    caption = f"{name}.rst" if caption == "" else caption
    return Output(name, f"{RESULTS}/tables/{name}", help, TABLE, caption, "Tables")


@dataclass(frozen=True)
class When:
    """When a report is written: ``test(config, get_method)`` on the validated config, with
    the method registry's lookup (the planner's, plugins included); ``text`` says it."""

    text: str
    test: Callable[[Mapping, Callable], bool]


ALWAYS = When("always", lambda cfg, get_method: True)


@dataclass(frozen=True)
class Report:
    """One report: a workflow rule (``localrule``) and a CLI command of the same name.

    Attributes:
        name: the rule and the command (``_`` as ``-``).
        help: one line (CLI help, README).
        builder: ``"module:function"``, keyword-only (module docstring).
        inputs: input kinds (:data:`INPUTS`), passed as lists of files.
        outputs: what it writes.
        reads: config keys (``"report.reference"``); the last key names the keyword.
        when: whether the workflow writes it for a config.
        per_model: one job per (dataset, model) of the grid, on that model's files.
    """

    name: str
    help: str
    builder: str
    inputs: tuple[str, ...]
    outputs: tuple[Output, ...]
    reads: tuple[str, ...] = ()
    when: When = ALWAYS
    per_model: bool = False

    @property
    def module(self) -> str:
        return self.builder.partition(":")[0]

    def function(self) -> Callable[..., None]:
        """The builder, imported on first use."""
        module, _, func = self.builder.partition(":")
        return getattr(importlib.import_module(module), func)

    @property
    def settings_names(self) -> tuple[str, ...]:
        """The builder's keywords for the config it reads (each read's last key)."""
        return tuple(r.rpartition(".")[2] for r in self.reads)

    def settings(self, config: Mapping) -> dict[str, Any]:
        """The builder's config keywords, read from ``config`` (validated, defaults filled)."""
        out = {}
        for read, name in zip(self.reads, self.settings_names, strict=True):
            value = config
            for key in read.split("."):
                value = value[key]
            out[name] = value
        return out

    def files(self, grid: Mapping) -> list[str]:
        """Every file it writes for ``grid``."""
        if not self.per_model:
            return [f for o in self.outputs for f in o.files()]
        return [
            f
            for d in grid["datasets"]
            for m in grid["models"]
            for o in self.outputs
            for f in o.files(dataset=d, model=m)
        ]

    def run(
        self,
        inputs: Mapping[str, Sequence[str]],
        outputs: Mapping[str, str | Sequence[str]],
        settings: Mapping[str, Any],
    ) -> None:
        """Call the builder: ``inputs`` by kind, ``outputs`` by name (the files or a path,
        see :meth:`Output.target`), ``settings`` from :meth:`settings`."""
        kwargs: dict[str, Any] = {k: list(inputs[k]) for k in self.inputs}
        kwargs |= {f"out_{o.name}": o.target(outputs[o.name]) for o in self.outputs}
        kwargs |= {k: settings[k] for k in self.settings_names}
        self.function()(**kwargs)


def _ablation(cfg: Mapping, get_method: Callable) -> bool:
    return sum(1 for m in cfg["grid"]["methods"] if get_method(m).ablation) >= 2


REPORTS: dict[str, Report] = {
    r.name: r
    for r in (
        Report(
            "tables",
            "main, dynamics and latency tables",
            "idap.reporting.tables:run",
            ("dense_metrics", "run_metrics", "dynamics", "dense_latency", "run_latency"),
            (
                _table("main", "Acc@1, GMACs and params of every run beside its dense model"),
                _table("dynamics", "every step of every run"),
                _table("latency", "latency of every model, each backend and batch size"),
            ),
        ),
        Report(
            "plots",
            "compression dynamics plot",
            "idap.reporting.plots:run",
            ("run_metrics", "dynamics"),
            (
                Output(
                    "dynamics",
                    f"{RESULTS}/plots/dynamics.png",
                    "accuracy and GMACs per step",
                    caption="dynamics_plot.rst",
                    category="Plots",
                ),
            ),
        ),
        Report(
            "compare",
            "comparison (methods x targets) and cost tables",
            "idap.reporting.compare:run",
            ("dense_metrics", "run_metrics", "dense_latency", "run_latency"),
            (
                _table("comparison", "methods x targets, paired differences to the reference"),
                _table("cost", "wall time per stage, iterations, images seen"),
                Output("runs", f"{RESULTS}/tables/runs.csv", "one numeric row per run"),
            ),
            reads=("report.latency_backend", "report.reference"),
        ),
        Report(
            "pareto",
            "Pareto plots (Acc@1 vs GMACs and vs latency) of one model on one dataset",
            "idap.reporting.compare:pareto",
            ("dense_metrics", "run_metrics", "dense_latency", "run_latency"),
            (
                Output(
                    "plot",
                    f"{RESULTS}/plots/pareto/{{dataset}}/{{model}}.png",
                    "Acc@1 vs GMACs and vs latency",
                    caption="pareto.rst",
                    category="Pareto plots",
                    subcategory="{model} on {dataset}",
                ),
            ),
            reads=("report.latency_backend",),
            per_model=True,
        ),
        Report(
            "ablation",
            "ablation table of the IDAP++ variants",
            "idap.reporting.ablation:run",
            ("dense_metrics", "run_metrics"),
            (_table("ablation", "the variants of IDAP++ side by side"),),
            when=When(
                "two or more IDAP++ ablation variants in the grid (config/ablation.yaml)",
                _ablation,
            ),
        ),
        Report(
            "budget_table",
            "budget mode: the largest reduction within max_drop",
            "idap.reporting.budget:run",
            ("dense_metrics", "run_metrics", "run_latency"),
            (_table("budget", "each method's largest reduction within Δ"),),
            reads=("report.latency_backend",),
            when=When("`prune.mode: budget`", lambda cfg, gm: cfg["prune"]["mode"] == "budget"),
        ),
        Report(
            "sparsity_report",
            "structured and unstructured methods on parameter sparsity and latency",
            "idap.reporting.sparsity:run",
            ("dense_metrics", "run_metrics", "dense_latency", "run_latency"),
            (
                _table("sparsity", "both families on both axes"),
                Output(
                    "plot",
                    f"{RESULTS}/plots/sparsity.png",
                    "Acc@1 vs parameter sparsity and vs latency",
                    caption="sparsity_plot.rst",
                    category="Plots",
                ),
            ),
            reads=("report.latency_backend",),
            when=When(
                "an unstructured method in the grid",
                lambda cfg, get_method: any(get_method(m).sparse for m in cfg["grid"]["methods"]),
            ),
        ),
        Report(
            "tuning",
            "rank each method's variants by val Acc@1; write the winner",
            "idap.reporting.tuning:run",
            ("run_metrics",),
            (
                _table("tuning", "each method's variants ranked by validation Acc@1"),
                Output(
                    "tuned",
                    f"{RESULTS}/tuning/tuned.yaml",
                    "each winner as a variant `<method>_tuned`, to pass beside a reporting config",
                ),
            ),
            reads=("variants", "grid.methods"),
            when=When("`report.tuning`", lambda cfg, gm: cfg["report"]["tuning"]),
        ),
    )
}


def get_report(name: str) -> Report:
    try:
        return REPORTS[name]
    except KeyError:
        raise KeyError(f"unknown report {name!r}; valid: {', '.join(REPORTS)}") from None


def final_files(config: Mapping, get_method: Callable) -> list[str]:
    """Every file of every report ``config`` calls for (the workflow's rule ``all``)."""
    return [
        f
        for r in REPORTS.values()
        if r.when.test(config, get_method)
        for f in r.files(config["grid"])
    ]


def markdown_table() -> str:
    """The README's table of reports."""
    lines = [
        "| report (rule, `idap` command) | writes | when |",
        "|---|---|---|",
    ]
    for r in REPORTS.values():
        outs = "; ".join(f"`{o.shown()}`: {o.help}" for o in r.outputs)
        lines.append(f"| `{r.name}`: {r.help} | {outs} | {r.when.text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
