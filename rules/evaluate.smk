rule evaluate:
    input:
        manifest=dataset_manifest,
        model=model_for_variant,
        dense=f"{R}/{{dataset}}/{{model}}/s{{seed}}/dense/model.json",
    output:
        metrics=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{variant}}/metrics.json",
    params:
        settings=settings("evaluate"),
        meta=variant_meta,
        code=code_hash("evaluate"),
    log:
        "logs/{dataset}/{model}/s{seed}/{variant}/evaluate.log",
    benchmark:
        "logs/{dataset}/{model}/s{seed}/{variant}/evaluate.bench.tsv"
    threads: 2
    resources:
        gpu=gpus(config["device"]),
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/evaluate.py"
