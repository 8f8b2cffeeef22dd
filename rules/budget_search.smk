rule budget_search:
    # prune.mode: budget. The target is an upper bound: whole runs of the method (every
    # stage and the fine-tune, in target mode) search for the largest reduction whose final
    # model stays within prune.max_drop; the accepted run's model and dynamics (probes
    # after its rows) are the method's final outputs. Chosen over `finetune` by the
    # Snakefile's ruleorder in budget mode only.
    input:
        manifest=dataset_manifest,
        dense=f"{R}/{{dataset}}/{{model}}/s{{seed}}/dense/model.json",
        weights=f"{R}/{{dataset}}/{{model}}/s{{seed}}/dense/model.safetensors",
    output:
        model=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{method}}/r{{target}}/finetune/model.json",
        weights=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{method}}/r{{target}}/finetune/model.safetensors",
        dynamics=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{method}}/r{{target}}/finetune/dynamics.csv",
    params:
        settings=settings("budget_search"),
        code=code_hash("budget_search"),
    log:
        "logs/{dataset}/{model}/s{seed}/{method}/r{target}/budget_search.log",
    benchmark:
        "logs/{dataset}/{model}/s{seed}/{method}/r{target}/budget_search.bench.tsv"
    threads: compression_threads
    resources:
        slurm_extra=compression_slurm_extra,
        gpu=gpus(config["device"]),
        mem_mb=8000,
        runtime=1440,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/budget_search.py"
