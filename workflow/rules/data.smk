rule prepare:
    """Load each dataset once before its runs start: download it if missing (not
    needed by the offline datasets), verify its checksums, record its shapes."""
    output:
        f"{RESULTS}/data/{{dataset}}.json",
    log:
        f"{RESULTS}/logs/prepare/{{dataset}}.log",
    params:
        data_dir=data_dir_option,
    conda:
        ENV
    shell:
        "lvmbench prepare {wildcards.dataset} {params.data_dir:q} --out {output:q} > {log:q} 2>&1"
