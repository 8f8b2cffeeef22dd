# Unstructured and dynamic-sparse methods (magnitude, lth, rigl, granet, pdp, movement):
# masks on every conv and linear weight, to the target parameter sparsity.
rule sparsify:
    input:
        unpack(stage_inputs("sparsify")),
        manifest=dataset_manifest,
    output:
        model=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{method}}/r{{target}}/sparsify/model.json",
        weights=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{method}}/r{{target}}/sparsify/model.safetensors",
        dynamics=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{method}}/r{{target}}/sparsify/dynamics.csv",
    params:
        settings=settings("sparsify"),
        code=code_hash("sparsify"),
    log:
        "logs/{dataset}/{model}/s{seed}/{method}/r{target}/sparsify.log",
    benchmark:
        "logs/{dataset}/{model}/s{seed}/{method}/r{target}/sparsify.bench.tsv"
    threads: 2
    resources:
        gpu=gpus(config["device"]),
        mem_mb=8000,
        runtime=480,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/sparsify.py"
