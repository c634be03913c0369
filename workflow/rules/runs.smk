# One directory per cell under results/runs/: train writes cell.json, train.csv,
# train.json, checkpoint.pt and snapshots/; evaluate adds eval.json; gradvar adds
# gradvar.csv; every JSON summary is written by RunDir, which records its provenance;
# logs/ holds each job's log and benchmark (time and memory); a train job's log is under
# results/logs/train/, one per bundle.
# checkpoint.pt and snapshots/ are not declared outputs on purpose: Snakemake deletes
# a failed job's outputs, and an interrupted run must keep its checkpoint to resume.
# Each rule's params are its own part of the plan (see common.smk): the training spec
# for train, the eval or gradvar settings for the measurements.


# One train rule per bundle (rules in a loop, Snakemake's way to give one job a variable
# set of outputs): its outputs are the members' train.json, its params the training spec
# they share, which does not change when the bundles are regrouped. A rule is named by
# its bundle's members (Bundle.key), never by its place in the list: a cluster job
# re-plans the workflow when other bundles may have finished (finished cells stay
# alone), and must still find its own rule. So no set-resources can name them: their time
# and memory come from the config keys train_runtime and train_mem_mb.
for _bundle in BUNDLES:

    rule:
        name:
            f"train_{_bundle.key}"
        input:
            f"{RESULTS}/data/{_bundle.cells[0].dataset}.json",
        output:
            [f"{RESULTS}/runs/{cell.id}/train.json" for cell in _bundle.cells],
        log:
            f"{RESULTS}/logs/train/{_bundle.id}.log",
        benchmark:
            f"{RESULTS}/logs/train/{_bundle.id}.benchmark.tsv"
        conda:
            ENV
        threads: THREADS
        resources:
            gpu=GPUS,
            runtime=PLAN.workflow.train_runtime,
            mem_mb=PLAN.workflow.train_mem_mb,
        params:
            spec=json.dumps(_bundle.spec, sort_keys=True),
        shell:
            "lvmbench train --cell {params.spec:q} --out {output:q} > {log:q} 2>&1"


rule evaluate:
    """Large-K log p(x), the bound curve, exact log p(x) where tractable, active units
    and the bound-ordering check on the test set, with the cell's eval settings; AIS and
    the BDMC sandwich for the cells the config's ais block selects."""
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
        ais=ais_settings,
    shell:
        "lvmbench evaluate {params.run:q} --settings {params.settings:q} --ais {params.ais:q} --out {output:q} "
        "> {log:q} 2>&1"


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
        "lvmbench gradvar {params.run:q} --settings {params.settings:q} --out {output:q} > {log:q} 2>&1"
