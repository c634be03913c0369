rule amortize:
    """Per-datapoint inference from the encoder's output and the amortization gap
    (the config's amortization block selects the cells)."""
    input:
        f"{RUN}/train.json",
    output:
        f"{RUN}/amortization.json",
    log:
        f"{RUN}/logs/amortize.log",
    benchmark:
        f"{RUN}/logs/amortize.benchmark.tsv"
    params:
        run=run_dir,
        options=amortize_options,
    threads: config["threads"]
    resources:
        gpu=config["gpu"],
    conda:
        ENV
    shell:
        "lvmbench amortize {params.run:q} --out {output:q} {params.options} --quiet > {log:q} 2>&1"
