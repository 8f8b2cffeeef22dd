rule latency:
    input:
        model=model_for_variant,
    output:
        latency=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{variant}}/latency.json",
        # the model ONNX Runtime timed (BatchNorm folded), checked against eager first
        onnx=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{variant}}/model.onnx",
    params:
        settings=settings("latency"),
        meta=variant_meta,
        code=code_hash("latency"),
    log:
        "logs/{dataset}/{model}/s{seed}/{variant}/latency.log",
    benchmark:
        "logs/{dataset}/{model}/s{seed}/{variant}/latency.bench.tsv"
    # every core of a local run, so no other job runs beside the timing; on SLURM a node
    # of its own. torch itself uses latency.threads (default 1)
    threads: exclusive_threads
    resources:
        slurm_extra=EXCLUSIVE_NODE,
        gpu=gpus(config["latency"]["device"]),
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/latency.py"
