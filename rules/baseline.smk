rule baseline:
    input:
        manifest=dataset_manifest,
        targets=ancient(f"{R}/{{dataset}}/{{model}}/targets.json"),
    output:
        model=f"{R}/{{dataset}}/{{model}}/s{{seed}}/dense/model.json",
        weights=f"{R}/{{dataset}}/{{model}}/s{{seed}}/dense/model.safetensors",
        log=f"{R}/{{dataset}}/{{model}}/s{{seed}}/dense/train_log.json",
    params:
        settings=settings("baseline"),
        code=code_hash("baseline"),
    log:
        "logs/{dataset}/{model}/s{seed}/dense/baseline.log",
    benchmark:
        "logs/{dataset}/{model}/s{seed}/dense/baseline.bench.tsv"
    threads: 2
    resources:
        gpu=gpus(config["device"]),
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/baseline.py"
