rule prune_filters:
    input:
        unpack(stage_inputs("prune_filters")),
        manifest=dataset_manifest,
    output:
        model=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{method}}/r{{target}}/prune_filters/model.json",
        weights=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{method}}/r{{target}}/prune_filters/model.safetensors",
        dynamics=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{method}}/r{{target}}/prune_filters/dynamics.csv",
    params:
        settings=settings("prune_filters"),
        code=code_hash("prune_filters"),
    log:
        "logs/{dataset}/{model}/s{seed}/{method}/r{target}/prune_filters.log",
    benchmark:
        "logs/{dataset}/{model}/s{seed}/{method}/r{target}/prune_filters.bench.tsv"
    threads: compression_threads
    resources:
        slurm_extra=compression_slurm_extra,
        gpu=gpus(config["device"]),
        mem_mb=8000,
        runtime=480,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/prune_filters.py"
