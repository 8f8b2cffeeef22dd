rule download:
    output:
        manifest=f"{DATA_ROOT}/{{dataset}}/manifest.json",
    params:
        settings=settings("download"),
        code=code_hash("download"),
    log:
        "logs/download/{dataset}.log",
    benchmark:
        "logs/download/{dataset}.bench.tsv"
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/download.py"
