# One rule per report of idap.reporting.registry (its inputs, outputs and config reads
# declared there), each running the one adapter script. Reports gather: local rules.
for _report in REPORTS.values():

    rule:
        name:
            _report.name
        localrule: True
        input:
            **report_inputs(_report),
        output:
            **report_outputs(_report),
        params:
            **_report.settings(config),
            code=code_hash("report", _report.module),
        log:
            report_log(_report),
        resources:
            gpu=0,
            mem_mb=2000,
            runtime=10,
        conda:
            "../envs/idap.yaml"
        script:
            "../workflow_scripts/report.py"
