rule tables:
    localrule: True
    input:
        dense_metrics=expand("{d}/metrics.json", d=dense_dirs()),
        run_metrics=expand("{d}/metrics.json", d=run_dirs()),
        dynamics=expand("{d}/finetune/dynamics.csv", d=run_dirs()),
        dense_latency=expand("{d}/latency.json", d=dense_dirs()),
        run_latency=expand("{d}/latency.json", d=run_dirs()),
    output:
        main=report(f"{R}/tables/main.md", category="Tables", caption="../report/main.rst"),
        main_csv=f"{R}/tables/main.csv",
        main_tex=f"{R}/tables/main.tex",
        dynamics=report(
            f"{R}/tables/dynamics.md", category="Tables", caption="../report/dynamics.rst"
        ),
        dynamics_csv=f"{R}/tables/dynamics.csv",
        dynamics_tex=f"{R}/tables/dynamics.tex",
        latency=report(f"{R}/tables/latency.md", category="Tables", caption="../report/latency.rst"),
        latency_csv=f"{R}/tables/latency.csv",
        latency_tex=f"{R}/tables/latency.tex",
    params:
        code=code_hash("tables"),
    log:
        "logs/tables.log",
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/tables.py"
