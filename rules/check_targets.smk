rule check_targets:
    localrule: True
    # Before any dense training: every (method, target) of the grid for this model must be
    # reachable under the per-layer floors (the architecture decides it, not the weights).
    # The baseline takes its output as ancient(), and it tracks no params: a check job
    # rerun on a changed grid made Snakemake 9 hide every missing job below it (dag.py masks
    # the jobs depending on a job that must rerun, then skips them through the ancient edge),
    # so the run after adding a method ran the check alone. Runs its record lacks are
    # checked by the planner instead (common.smk), before any job.
    output:
        f"{R}/{{dataset}}/{{model}}/targets.json",
    log:
        "logs/{dataset}/{model}/check_targets.log",
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=10,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/check_targets.py"
