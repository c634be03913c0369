# lvmbench: the benchmark as a Snakemake workflow. Every rule is one call of the
# lvmbench command line; the job set is lvmbench.grid.plan(config). See README.md and
# config/README.md. This is the workflow's only Snakefile: `snakemake --cores all` from
# the repository root runs the default target, `all`.

import os
import sys

from snakemake.utils import min_version

from lvmbench.configfile import read_config
from lvmbench.errors import LvmbenchError

min_version("9.0")  # --replace-workflow-config (README), runtime units in profiles/slurm

# Snakemake's reader keeps the last of two equal keys and ends in a traceback on bytes that
# are not UTF-8: lvmbench reads every config file first and refuses both with one line
# (files given with --configfile were read by Snakemake already; their repeated keys are
# caught here all the same).
for _path in ["config/config.yaml", *workflow.overwrite_configfiles]:
    if os.path.exists(_path):
        try:
            read_config(_path)
        except LvmbenchError as err:
            sys.exit(f"lvmbench config error: {err}")


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
