rule check_targets:
    # Before any dense training: every (method, target) of the grid for this model must be
    # reachable under the per-layer floors (the architecture decides it, not the weights).
    # The baseline takes its output as ancient(): a changed grid rechecks, never retrains.
    output:
        f"{R}/{{dataset}}/{{model}}/targets.json",
    params:
        settings=settings("seed", "data", "prune"),
        runs=lambda w: json.dumps([[m, float(t)] for m in GRID["methods"] for t in GRID["targets"]]),
        code=code_hash("check_targets"),
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
