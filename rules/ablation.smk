rule ablation:
    localrule: True
    input:
        dense_metrics=expand("{d}/metrics.json", d=dense_dirs()),
        run_metrics=expand("{d}/metrics.json", d=run_dirs()),
    output:
        md=report(f"{R}/tables/ablation.md", category="Tables", caption="../report/ablation.rst"),
        csv=f"{R}/tables/ablation.csv",
        tex=f"{R}/tables/ablation.tex",
    params:
        code=code_hash("ablation"),
    log:
        "logs/ablation.log",
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/ablation.py"
