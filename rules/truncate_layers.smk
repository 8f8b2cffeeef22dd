rule truncate_layers:
    input:
        unpack(stage_inputs("truncate_layers")),
        manifest=dataset_manifest,
    output:
        model=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{method}}/r{{target}}/truncate_layers/model.json",
        weights=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{method}}/r{{target}}/truncate_layers/model.safetensors",
        dynamics=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{method}}/r{{target}}/truncate_layers/dynamics.csv",
    params:
        settings=settings("truncate_layers"),
        code=code_hash("truncate_layers"),
    log:
        "logs/{dataset}/{model}/s{seed}/{method}/r{target}/truncate_layers.log",
    benchmark:
        "logs/{dataset}/{model}/s{seed}/{method}/r{target}/truncate_layers.bench.tsv"
    threads: compression_threads
    resources:
        slurm_extra=compression_slurm_extra,
        gpu=gpus(config["device"]),
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/truncate_layers.py"
