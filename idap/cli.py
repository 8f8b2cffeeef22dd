"""`idap` command line: one subcommand per pipeline stage and per report, each a thin call
to a ``run()`` (the report commands follow from ``idap.reporting.registry``).

Settings arrive as a config file (``--config``) and/or a JSON mapping of config sections
(``--settings``, what the Snakemake rules pass); both are validated against the schema with
defaults filled, so the CLI and the workflow reject the same mistakes the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from idap.core.config import ConfigError, load_config, validate_config
from idap.core.errors import one_line


def _settings(args) -> dict:
    cfg = load_config(args.config) if args.config else {}
    if args.settings:
        extra = _json_object("--settings", args.settings)
        for k, v in extra.items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k].update(v)
            else:
                cfg[k] = v
    cfg = validate_config(cfg)
    from idap.stages.grid import check_grid

    check_grid(cfg)
    return cfg


def _json_object(option: str, text: str | None) -> dict:
    """Parse a JSON-object option (``--settings``, ``--meta``); one-line error otherwise."""
    if not text:
        return {}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{option} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{option} must be a JSON object, got {type(obj).__name__}")
    return obj


def _check_target(target: float) -> float:
    if not 0 < target < 1:
        raise ValueError(f"--target must be a reduction in (0, 1), got {target}")
    return target


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (defaults from the schema)")
    p.add_argument("--settings", help="JSON mapping of config sections overriding --config")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")


def _typed(args, model: str | None = None):
    """Typed settings from ``--config``/``--settings``, as ``model`` and the command's
    ``--dataset`` and ``--method`` see them (their overrides and variant merged)."""
    from idap.core.settings import Settings

    return Settings.from_config(
        _settings(args),
        model=model,
        dataset=getattr(args, "dataset", None),
        method=getattr(args, "method", None),
    )


def _arch(path: str) -> str:
    from idap.models.artifact import read_record

    return read_record(path)["arch"]


def cmd_download(a):
    from idap.stages import download

    print(download.run(a.dataset, _typed(a)))


def cmd_baseline(a):
    from idap.stages import baseline

    baseline.run(a.dataset, a.model, a.out, a.log, _typed(a, a.model), a.threads)


def cmd_evaluate(a):
    from idap.stages import evaluate

    meta = _json_object("--meta", a.meta)
    settings = _typed(a, _arch(a.model))
    evaluate.run(a.model, a.out, a.dataset, settings, a.reference, meta, a.threads)


def cmd_stage(a):
    """prune-filters, truncate-layers, finetune: one stage of a method, through the
    orchestrator, between loading and saving artifacts."""
    from idap.stages import jobs

    if a.target is not None:
        _check_target(a.target)
    jobs.run_stage(
        a.command.replace("-", "_"),
        model=a.model,
        dense=a.dense or a.model,
        out_model=a.out,
        out_dynamics=a.dynamics,
        dataset=a.dataset,
        method=a.method,
        target=a.target,
        settings=_typed(a, _arch(a.model)),
        dynamics_in=a.dynamics_in,
        threads=a.threads,
    )


def cmd_latency(a):
    from idap.stages import latency

    meta = _json_object("--meta", a.meta)
    settings = _typed(a, _arch(a.model)).latency
    latency.run(a.model, a.out, settings, meta, a.threads, onnx_out=a.onnx)


def cmd_budget_search(a):
    """prune.mode budget: the search over whole runs of a method, on the dense model."""
    from idap.stages import jobs

    jobs.run_search(
        dense=a.dense,
        out_model=a.out,
        out_dynamics=a.dynamics,
        dataset=a.dataset,
        method=a.method,
        target=_check_target(a.target),
        settings=_typed(a, _arch(a.dense)),
        threads=a.threads,
    )


def cmd_check_targets(a):
    from idap.stages import plan

    plan.check_grid_targets(_settings(a), a.dataset, a.model, out=a.out)


def cmd_report(a):
    """Any report of idap.reporting.registry: its builder on the files given, its config
    reads from --config/--settings."""
    from idap.reporting.registry import get_report

    report = get_report(a.command.replace("-", "_"))
    settings = report.settings(_settings(a)) if report.reads else {}
    inputs = {k: getattr(a, k) for k in report.inputs}
    report.run(inputs, {o.name: getattr(a, f"out_{o.name}") for o in report.outputs}, settings)


def _add_report(sub, report) -> None:
    """The command of one report: ``--<input kind> FILE…`` per input, ``--out-<name> PATH``
    per output, ``--config``/``--settings`` when it reads the config."""
    from idap.reporting.registry import INPUTS

    p = sub.add_parser(report.name.replace("_", "-"), help=report.help)
    for kind in report.inputs:
        flag = "--" + kind.replace("_", "-")
        p.add_argument(flag, nargs="+", required=True, help=INPUTS[kind].help)
    for o in report.outputs:
        where = f"stem: writes {'/'.join(o.exts)} beside it" if o.exts else "path"
        p.add_argument(
            f"--out-{o.name.replace('_', '-')}", required=True, help=f"{o.help} ({where})"
        )
    if report.reads:
        reads = ", ".join(report.reads)
        p.add_argument("--config", help=f"YAML config file for {reads} (defaults from the schema)")
        p.add_argument("--settings", help="JSON mapping of config sections overriding --config")
    p.set_defaults(func=cmd_report)


def cmd_check_config(a):
    from idap.stages.grid import check_grid

    cfg = load_config(a.path)
    check_grid(cfg)
    print(json.dumps(cfg, indent=2, sort_keys=True))


def build_parser() -> argparse.ArgumentParser:
    from idap import __version__

    parser = argparse.ArgumentParser(prog="idap", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"idap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="make a dataset available (download or offline copy)")
    p.add_argument("--dataset", required=True)
    _common(p)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("baseline", help="train the dense model")
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="model artifact path (.json)")
    p.add_argument("--log", required=True, help="training log (.json)")
    _common(p)
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("evaluate", help="metrics JSON of one model")
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True, help="model artifact (.json)")
    p.add_argument("--reference", help="dense model artifact for the output deviation")
    p.add_argument("--meta", help="JSON fields copied into the metrics")
    p.add_argument("--out", required=True)
    _common(p)
    p.set_defaults(func=cmd_evaluate)

    for name, what in (
        ("prune-filters", "stage 1: iterative filter pruning"),
        ("truncate-layers", "stage 2: flow-guided layer truncation"),
        ("sparsify", "unstructured methods: masks to a parameter sparsity"),
        ("finetune", "final fine-tune with KD from the dense model"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("--dataset", required=True)
        p.add_argument("--model", required=True, help="input artifact (.json)")
        p.add_argument(
            "--dense", help="dense model artifact (default: --model, for a method's first stage)"
        )
        p.add_argument("--method", required=True)
        p.add_argument(
            "--target",
            type=float,
            required=name != "finetune",
            help="reduction in (0, 1) of prune.target_kind (MACs by default), parameter "
            "sparsity for unstructured methods (finetune: default from the input record)",
        )
        p.add_argument("--dynamics-in", help="dynamics of the stage before (none after dense)")
        p.add_argument("--out", required=True)
        p.add_argument("--dynamics", required=True)
        _common(p)
        p.set_defaults(func=cmd_stage)

    p = sub.add_parser("budget-search", help="prune.mode budget: search whole runs of a method")
    p.add_argument("--dataset", required=True)
    p.add_argument("--dense", required=True, help="dense model artifact (.json)")
    p.add_argument("--method", required=True)
    p.add_argument("--target", type=float, required=True, help="upper bound of the reduction")
    p.add_argument("--out", required=True)
    p.add_argument("--dynamics", required=True)
    _common(p)
    p.set_defaults(func=cmd_budget_search)

    p = sub.add_parser("check-targets", help="refuse unreachable MAC targets of a config's grid")
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", help="record of the runs checked (.json)")
    _common(p)
    p.set_defaults(func=cmd_check_targets)

    p = sub.add_parser("latency", help="latency of one model (median, IQR)")
    p.add_argument("--model", required=True)
    p.add_argument("--meta", help="JSON fields copied into the output")
    p.add_argument("--out", required=True)
    p.add_argument("--onnx", help="also write the timed model as ONNX (BatchNorm folded)")
    _common(p)
    p.set_defaults(func=cmd_latency)

    from idap.reporting.registry import REPORTS

    for report in REPORTS.values():
        _add_report(sub, report)

    p = sub.add_parser("check-config", help="validate a config and print it with defaults")
    p.add_argument("path")
    p.set_defaults(func=cmd_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one clear line for users; IDAP_DEBUG=1 for the traceback
        if os.environ.get("IDAP_DEBUG"):
            traceback.print_exc()
        msg = one_line(e)
        print(f"idap {args.command}: error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
