rule compare:
    localrule: True
    input:
        dense_metrics=expand("{d}/metrics.json", d=dense_dirs()),
        run_metrics=expand("{d}/metrics.json", d=run_dirs()),
        dense_latency=expand("{d}/latency.json", d=dense_dirs()),
        run_latency=expand("{d}/latency.json", d=run_dirs()),
    output:
        comparison=report(
            f"{R}/tables/comparison.md", category="Tables", caption="../report/comparison.rst"
        ),
        comparison_csv=f"{R}/tables/comparison.csv",
        comparison_tex=f"{R}/tables/comparison.tex",
        cost=report(f"{R}/tables/cost.md", category="Tables", caption="../report/cost.rst"),
        cost_csv=f"{R}/tables/cost.csv",
        cost_tex=f"{R}/tables/cost.tex",
        runs=f"{R}/tables/runs.csv",
    params:
        backend=config["report"]["latency_backend"],
        reference=config["report"]["reference"],
        code=code_hash("compare"),
    log:
        "logs/compare.log",
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/compare.py"


rule pareto:
    localrule: True
    input:
        dense_metrics=lambda w: [f"{d}/metrics.json" for d in dense_dirs(w.dataset, w.model)],
        run_metrics=lambda w: [f"{d}/metrics.json" for d in run_dirs(w.dataset, w.model)],
        dense_latency=lambda w: [f"{d}/latency.json" for d in dense_dirs(w.dataset, w.model)],
        run_latency=lambda w: [f"{d}/latency.json" for d in run_dirs(w.dataset, w.model)],
    output:
        png=report(
            f"{R}/plots/pareto/{{dataset}}/{{model}}.png",
            category="Pareto plots",
            subcategory="{model} on {dataset}",
            caption="../report/pareto.rst",
        ),
    params:
        backend=config["report"]["latency_backend"],
        code=code_hash("pareto"),
    log:
        "logs/pareto/{dataset}/{model}.log",
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/pareto.py"


rule budget_table:
    localrule: True
    # prune.mode: budget only: the largest reduction each method reaches within max_drop
    input:
        dense_metrics=expand("{d}/metrics.json", d=dense_dirs()),
        run_metrics=expand("{d}/metrics.json", d=run_dirs()),
        run_latency=expand("{d}/latency.json", d=run_dirs()),
    output:
        report(f"{R}/tables/budget.md", category="Tables"),
        f"{R}/tables/budget.csv",
        f"{R}/tables/budget.tex",
    params:
        backend=config["report"]["latency_backend"],
        code=code_hash("budget_table"),
    log:
        "logs/budget_table.log",
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/budget_table.py"


rule sparsity_report:
    localrule: True
    # grids with an unstructured method: both families on parameter sparsity and latency
    input:
        dense_metrics=expand("{d}/metrics.json", d=dense_dirs()),
        run_metrics=expand("{d}/metrics.json", d=run_dirs()),
        dense_latency=expand("{d}/latency.json", d=dense_dirs()),
        run_latency=expand("{d}/latency.json", d=run_dirs()),
    output:
        table=report(
            f"{R}/tables/sparsity.md", category="Tables", caption="../report/sparsity.rst"
        ),
        table_csv=f"{R}/tables/sparsity.csv",
        table_tex=f"{R}/tables/sparsity.tex",
        png=report(
            f"{R}/plots/sparsity.png", category="Plots", caption="../report/sparsity_plot.rst"
        ),
    params:
        backend=config["report"]["latency_backend"],
        code=code_hash("sparsity"),
    log:
        "logs/sparsity_report.log",
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/idap.yaml"
    script:
        "../workflow_scripts/sparsity.py"
