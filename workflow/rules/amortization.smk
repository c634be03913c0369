rule amortize:
    """Per-datapoint inference from the encoder's output and the amortization gap
    (the config's amortization block selects the cells and holds the settings)."""
    input:
        f"{RUN}/train.json",
    output:
        f"{RUN}/amortization.json",
    log:
        f"{RUN}/logs/amortize.log",
    benchmark:
        f"{RUN}/logs/amortize.benchmark.tsv"
    conda:
        ENV
    threads: THREADS
    resources:
        gpu=GPUS,
    params:
        run=run_dir,
        settings=amortize_settings,
    shell:
        "lvmbench amortize {params.run:q} --settings {params.settings:q} --out {output:q} > {log:q} 2>&1"
