TABLES = f"{RESULTS}/tables"
FIGURES = f"{RESULTS}/figures"


rule plan:
    """The cells of the config, one id per line, and the skipped combinations with
    their reasons (the registries' declarations decide)."""
    output:
        cells=f"{RESULTS}/plan/cells.txt",
        skipped=f"{RESULTS}/plan/skipped.csv",
    log:
        f"{RESULTS}/logs/plan.log",
    params:
        config=plan_config,
    conda:
        ENV
    shell:
        "lvmbench plan {params.config:q} --skipped {output.skipped:q} > {output.cells:q} 2> {log:q}"


rule aggregate:
    """Every run directory into the results tables."""
    input:
        run_files("train.json"),
        run_files("eval.json"),
        run_files("gradvar.csv"),
        run_files("amortization.json", AMORTIZED),
        skipped=rules.plan.output.skipped,
    output:
        *([f"{TABLES}/published.csv", f"{TABLES}/published.md"] if config.get("published") else []),
        summary=report(
            f"{TABLES}/summary.csv",
            caption="../report/summary.rst",
            category="Tables",
            labels={"table": "test log-likelihood, one row per run"},
        ),
        summary_md=f"{TABLES}/summary.md",
        summary_tex=f"{TABLES}/summary.tex",
        summary_grouped=report(
            f"{TABLES}/summary_grouped.csv",
            caption="../report/summary_grouped.rst",
            category="Tables",
            labels={"table": "test log-likelihood, mean and sd over seeds"},
        ),
        bound_curve=f"{TABLES}/bound_curve.csv",
        ordering=report(
            f"{TABLES}/ordering.csv",
            caption="../report/ordering.rst",
            category="Tables",
            labels={"table": "bound ordering"},
        ),
        ordering_md=f"{TABLES}/ordering.md",
        ordering_checks=f"{TABLES}/ordering_checks.csv",
        sandwich=report(
            f"{TABLES}/sandwich.csv",
            caption="../report/sandwich.rst",
            category="Tables",
            labels={"table": "AIS and the BDMC sandwich"},
        ),
        sandwich_md=f"{TABLES}/sandwich.md",
        gradvar=report(
            f"{TABLES}/gradvar.csv",
            caption="../report/gradvar.rst",
            category="Tables",
            labels={"table": "gradient variance and SNR"},
        ),
        gradvar_md=f"{TABLES}/gradvar.md",
        skipped=report(
            f"{TABLES}/skipped.csv",
            caption="../report/skipped.rst",
            category="Tables",
            labels={"table": "skipped combinations"},
        ),
        skipped_md=f"{TABLES}/skipped.md",
    log:
        f"{RESULTS}/logs/aggregate.log",
    params:
        runs=run_dirs,
        tables=output_dir,
        published=published_json,
    conda:
        ENV
    shell:
        "lvmbench aggregate {params.runs:q} --out {params.tables:q} --skipped {input.skipped:q} "
        "--published {params.published:q} > {log:q} 2>&1"


rule plot:
    """The benchmark figures (PNG and PDF) from the tables and the run directories.
    Which figures exist depends on the config (one bound-curve figure per model, SNR
    figures where K varies, ...), so the output is the folder."""
    input:
        rules.aggregate.output,
    output:
        report(
            directory(FIGURES),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
    log:
        f"{RESULTS}/logs/plot.log",
    params:
        runs=run_dirs,
        tables=input_dir,
        figures=first_output,
    conda:
        ENV
    shell:
        "lvmbench plot {params.tables:q} --runs {params.runs:q} --out {params.figures:q} > {log:q} 2>&1"
