# One directory per cell under results/runs/: train writes cell.json, train.csv,
# train.json, checkpoint.pt and snapshots/; evaluate adds eval.json (written by RunDir,
# which records its provenance, as in train.json); gradvar adds
# gradvar.csv; logs/ holds each job's log and benchmark (time and memory).
# checkpoint.pt and snapshots/ are not declared outputs on purpose: Snakemake deletes
# a failed job's outputs, and an interrupted run must keep its checkpoint to resume.
# Each rule's params are its own part of the plan (see common.smk): the training spec
# for train, the eval or gradvar settings for the measurements.


rule train:
    """Train one cell from its training spec (dataset x model x objective x K x
    estimator x seed, with their options and the train settings)."""
    input:
        prepared_dataset,
    output:
        summary=f"{RUN}/train.json",
        curve=f"{RUN}/train.csv",
    log:
        f"{RUN}/logs/train.log",
    benchmark:
        f"{RUN}/logs/train.benchmark.tsv"
    conda:
        ENV
    threads: THREADS
    resources:
        gpu=GPUS,
    params:
        cell=train_spec,
        run=run_dir,
    shell:
        "lvmbench train --cell {params.cell:q} --out {params.run:q} --quiet > {log:q} 2>&1"


rule evaluate:
    """Large-K log p(x), the bound curve, exact log p(x) where tractable, active units
    and the bound-ordering check on the test set, with the cell's eval settings."""
    input:
        f"{RUN}/train.json",
    output:
        f"{RUN}/eval.json",
    log:
        f"{RUN}/logs/evaluate.log",
    benchmark:
        f"{RUN}/logs/evaluate.benchmark.tsv"
    conda:
        ENV
    threads: THREADS
    resources:
        gpu=GPUS,
    params:
        run=run_dir,
        settings=eval_settings,
    shell:
        "lvmbench evaluate {params.run:q} --settings {params.settings:q} --quiet > {log:q} 2>&1"


rule gradvar:
    """Gradient variance and SNR of every valid estimator at the cell's snapshots, with
    the cell's gradvar settings."""
    input:
        f"{RUN}/train.json",
    output:
        f"{RUN}/gradvar.csv",
    log:
        f"{RUN}/logs/gradvar.log",
    benchmark:
        f"{RUN}/logs/gradvar.benchmark.tsv"
    conda:
        ENV
    threads: THREADS
    resources:
        gpu=GPUS,
    params:
        run=run_dir,
        settings=gradvar_settings,
    shell:
        "lvmbench gradvar {params.run:q} --settings {params.settings:q} --out {output:q} --quiet > {log:q} 2>&1"
