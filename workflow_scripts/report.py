"""Every report rule (rules/report.smk): the builder of the report the rule is named after
(idap.reporting.registry), given the rule's named inputs, outputs and config params."""

import _checkout  # noqa: F401  (this checkout's idap first)

from idap.workflow import job

sm = snakemake  # noqa: F821  (injected by Snakemake's script directive)
with job(sm, sm.rule, import_plugins=False):  # a report reads no plugin code
    from idap.reporting.registry import get_report

    report = get_report(sm.rule)
    report.run(
        {k: sm.input[k] for k in report.inputs},
        {o.name: sm.output[o.name] for o in report.outputs},
        {k: sm.params[k] for k in report.settings_names},
    )
