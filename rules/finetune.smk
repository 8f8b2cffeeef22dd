rule finetune:
    input:
        manifest=dataset_manifest,
        dense=f"{R}/{{dataset}}/{{model}}/s{{seed}}/dense/model.json",
        model=lambda w: f"{compressed_stage(w)}/model.json",
        weights=lambda w: f"{compressed_stage(w)}/model.safetensors",
        dynamics=lambda w: f"{compressed_stage(w)}/dynamics.csv",
    output:
        model=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{method}}/r{{target}}/finetune/model.json",
        weights=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{method}}/r{{target}}/finetune/model.safetensors",
        dynamics=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{method}}/r{{target}}/finetune/dynamics.csv",
    params:
        settings=settings("finetune"),
        code=code_hash("finetune"),
    log:
        "logs/{dataset}/{model}/s{seed}/{method}/r{target}/finetune.log",
    benchmark:
        "logs/{dataset}/{model}/s{seed}/{method}/r{target}/finetune.bench.tsv"
    threads: 2
    resources:
        gpu=gpus(config["device"]),
        mem_mb=8000,
        runtime=480,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/finetune.py"
