rule prepare:
    """Load each dataset once before its runs start: download it if missing (not
    needed by the offline datasets), verify its checksums, record its shapes."""
    output:
        f"{RESULTS}/data/{{dataset}}.json",
    log:
        f"{RESULTS}/logs/prepare/{{dataset}}.log",
    conda:
        ENV
    shell:
        "lvmbench prepare {wildcards.dataset} --out {output:q} > {log:q} 2>&1"
