rule plots:
    localrule: True
    input:
        run_metrics=expand("{d}/metrics.json", d=run_dirs()),
        dynamics=expand("{d}/finetune/dynamics.csv", d=run_dirs()),
    output:
        dynamics=report(
            f"{R}/plots/dynamics.png", category="Plots", caption="../report/dynamics_plot.rst"
        ),
    params:
        code=code_hash("plots"),
    log:
        "logs/plots.log",
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/plots.py"
