# lvmbench: the benchmark as a Snakemake workflow. Every rule is one call of the
# lvmbench command line; the job set is lvmbench.grid.plan(config). See README.md and
# config/README.md. This is the workflow's only Snakefile: `snakemake --cores all` from
# the repository root runs the default target, `all`.

from snakemake.utils import min_version

min_version("9.0")  # --replace-workflow-config (README), runtime units in profiles/slurm


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


container: CONTAINER  # the config key container, used with --software-deployment-method apptainer


include: "workflow/rules/data.smk"  # prepare: load and verify each dataset once
include: "workflow/rules/runs.smk"  # train, evaluate, gradvar: one run directory per cell
include: "workflow/rules/amortization.smk"  # amortize: per-datapoint inference for selected cells
include: "workflow/rules/results.smk"  # plan, aggregate, plot


localrules:
    all,
    plan,
    prepare,
    aggregate,
    plot,


rule all:
    """The tables and figures of every cell of the config."""
    default_target: True
    input:
        rules.aggregate.output,
        rules.plot.output,
