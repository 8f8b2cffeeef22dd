rule latency:
    input:
        model=model_for_variant,
    output:
        latency=f"{R}/{{dataset}}/{{model}}/s{{seed}}/{{variant}}/latency.json",
    params:
        settings=settings("latency"),
        meta=variant_meta,
        code=code_hash("latency"),
    log:
        "logs/{dataset}/{model}/s{seed}/{variant}/latency.log",
    # the job holds two cores (every core of the default machine) so no other job runs
    # beside the timing; torch itself uses latency.threads (default 1)
    threads: 2
    resources:
        gpu=gpus(config["latency"]["device"]),
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/latency.py"
