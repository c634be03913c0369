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
    conda:
        ENV
    params:
        config=plan_config,
    shell:
        "lvmbench plan {params.config:q} --skipped {output.skipped:q} > {output.cells:q} 2> {log:q}"


rule aggregate:
    """Every run directory into the results tables (CSV, Markdown, LaTeX, and HTML pages
    for the report)."""
    input:
        run_files("train.json"),
        run_files("eval.json"),
        run_files("gradvar.csv"),
        run_files("amortization.json", AMORTIZED),
        skipped=rules.plan.output.skipped,
    output:
        *(
            [
                f"{TABLES}/published.csv",
                f"{TABLES}/published.md",
                report(
                    f"{TABLES}/published.html",
                    caption="../report/published.rst",
                    category="Tables",
                    labels={"table": "published vs reproduced"},
                ),
            ]
            if config.get("published")
            else []
        ),
        *(
            [
                f"{TABLES}/claims.csv",
                f"{TABLES}/claims.md",
                report(
                    f"{TABLES}/claims.html",
                    caption="../report/claims.rst",
                    category="Tables",
                    labels={"table": "paper claims"},
                ),
            ]
            if config.get("claims")
            else []
        ),
        summary=f"{TABLES}/summary.csv",
        summary_md=f"{TABLES}/summary.md",
        summary_html=report(
            f"{TABLES}/summary.html",
            caption="../report/summary.rst",
            category="Tables",
            labels={"table": "test log-likelihood, mean and sd over seeds"},
        ),
        summary_tex=f"{TABLES}/summary.tex",
        summary_grouped=f"{TABLES}/summary_grouped.csv",
        runs_md=f"{TABLES}/runs.md",
        runs_html=report(
            f"{TABLES}/runs.html",
            caption="../report/runs.rst",
            category="Tables",
            labels={"table": "one row per run"},
        ),
        bound_curve=f"{TABLES}/bound_curve.csv",
        ordering=f"{TABLES}/ordering.csv",
        ordering_md=f"{TABLES}/ordering.md",
        ordering_html=report(
            f"{TABLES}/ordering.html",
            caption="../report/ordering.rst",
            category="Tables",
            labels={"table": "bound ordering"},
        ),
        ordering_checks=f"{TABLES}/ordering_checks.csv",
        sandwich=f"{TABLES}/sandwich.csv",
        sandwich_md=f"{TABLES}/sandwich.md",
        sandwich_html=report(
            f"{TABLES}/sandwich.html",
            caption="../report/sandwich.rst",
            category="Tables",
            labels={"table": "AIS and the BDMC sandwich"},
        ),
        gradvar=f"{TABLES}/gradvar.csv",
        gradvar_md=f"{TABLES}/gradvar.md",
        gradvar_html=report(
            f"{TABLES}/gradvar.html",
            caption="../report/gradvar.rst",
            category="Tables",
            labels={"table": "gradient variance and SNR"},
        ),
        skipped=f"{TABLES}/skipped.csv",
        skipped_md=f"{TABLES}/skipped.md",
        skipped_html=report(
            f"{TABLES}/skipped.html",
            caption="../report/skipped.rst",
            category="Tables",
            labels={"table": "skipped combinations"},
        ),
    log:
        f"{RESULTS}/logs/aggregate.log",
    conda:
        ENV
    params:
        runs=run_dirs,
        tables=output_dir,
        published=published_json,
        claims=claims_json,
    shell:
        "lvmbench aggregate {params.runs:q} --out {params.tables:q} --skipped {input.skipped:q} "
        "--published {params.published:q} --claims {params.claims:q} > {log:q} 2>&1"


rule plot:
    """The benchmark figures (PNG and PDF) from the tables and the run directories, in
    figures/<experiment>/<figure type>/. Which figures exist depends on the config (one
    bound-curve figure per model, SNR figures where K varies, ...), so the output is the
    folder."""
    input:
        rules.aggregate.output,
    output:
        report(
            directory(FIGURES),
            patterns=["{experiment}/{figure}/{name}.png"],
            caption="../report/figures.rst",
            category="{experiment}",
            subcategory="{figure}",
            labels={"figure": "{name}"},
        ),
    log:
        f"{RESULTS}/logs/plot.log",
    conda:
        ENV
    params:
        runs=run_dirs,
        tables=input_dir,
        figures=first_output,
    shell:
        "lvmbench plot {params.tables:q} --runs {params.runs:q} --out {params.figures:q} > {log:q} 2>&1"
