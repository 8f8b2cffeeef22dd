rule tuning:
    localrule: True
    input:
        run_metrics=expand("{d}/metrics.json", d=run_dirs()),
    output:
        md=report(f"{R}/tables/tuning.md", category="Tables", caption="../report/tuning.rst"),
        csv=f"{R}/tables/tuning.csv",
        tex=f"{R}/tables/tuning.tex",
        tuned=f"{R}/tuning/tuned.yaml",
    params:
        variants=config["variants"],
        methods=GRID["methods"],
        code=code_hash("tuning"),
    log:
        "logs/tuning.log",
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/tuning.py"
