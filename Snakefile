# The workflow lives in workflow/ (Snakemake's standard layout). This root file lets
# `snakemake` run from the repository root; it must name the default target itself,
# because `include:` drops `default_target` from the included file.

include: "workflow/Snakefile"


rule default:
    default_target: True
    input:
        rules.all.input,
