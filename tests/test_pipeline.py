"""The Snakemake workflow: lint, the job set of the default config, and a full run of
the tiny .test config (every rule, every model family) into a temporary directory.

Every Snakemake call runs in a temporary working directory (``--directory``) holding a
copy of the config, so the repository is never littered with results.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lvmbench.grid import bundles, plan
from lvmbench.settings import EvalSettings, GradvarSettings, TrainSettings

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "Snakefile"
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"
TINY_CONFIG = ROOT / ".test" / "config" / "config.yaml"

needs_snakemake = pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the workflow with ``workdir`` as its working directory (config/config.yaml there)."""
    cmd = ["snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def workdir_with(tmp: Path, config: dict | Path) -> Path:
    """A working directory whose config/config.yaml is ``config``."""
    (tmp / "config").mkdir(parents=True, exist_ok=True)
    target = tmp / "config" / "config.yaml"
    if isinstance(config, Path):
        shutil.copy(config, target)
    else:
        target.write_text(yaml.safe_dump(config, sort_keys=False))
    return tmp


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> number of jobs."""
    table = output[output.index("Job stats:"):]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def train_jobs(counts: dict[str, int]) -> int:
    """Train jobs in a job-count table: one rule per bundle, train_<Bundle.key>."""
    return sum(n for rule, n in counts.items() if re.fullmatch(r"train_[0-9a-f]{12}", rule))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------
# static checks
# ---------------------------------------------------------------------------------------
@needs_snakemake
def test_lint_is_clean():
    proc = subprocess.run(["snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("snakefmt") is None, reason="snakefmt is not installed (the test extra has it)")
def test_workflow_is_formatted():
    """CI checks the same: snakefmt's format, with the line length of pyproject.toml."""
    proc = subprocess.run(["snakefmt", "--check", "Snakefile", "workflow/"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_lists_every_setting():
    """The schema's train/eval/gradvar blocks are exactly the settings dataclasses' fields,
    each with a type and a description."""
    schema = load(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    for block, cls in (("train", TrainSettings), ("eval", EvalSettings), ("gradvar", GradvarSettings)):
        props = schema["$defs"][block]["properties"]
        assert set(props) == {f.name for f in fields(cls)}, block
        for key, spec in props.items():
            assert "type" in spec and spec.get("description"), f"{block}.{key}"


def test_config_readme_documents_every_key():
    schema = load(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    readme = (ROOT / "config" / "README.md").read_text()
    keys = set(schema["properties"]) | set(schema["$defs"]["experiment"]["properties"])
    for block in ("train", "eval", "gradvar"):
        keys |= set(schema["$defs"][block]["properties"])
    missing = sorted(k for k in keys if f"`{k}`" not in readme)
    assert not missing, f"config/README.md does not document {missing}"


@needs_snakemake
def test_default_config_dry_run_matches_plan(tmp_path):
    """One train job per bundle, one evaluate and gradvar job per valid cell that plan() reports."""
    planned = plan(load(DEFAULT_CONFIG))
    cells, skipped = planned.cells, planned.skipped
    counts = job_counts(snakemake(workdir_with(tmp_path, DEFAULT_CONFIG), "-n", "--quiet", "rules").stdout)
    assert train_jobs(counts) == len(bundles(cells, planned.workflow.bundle)) < len(cells)
    assert counts["evaluate"] == counts["gradvar"] == len(cells)
    assert counts["prepare"] == len({c.dataset for c in cells})
    assert skipped, "the default config should show some skipped combinations"


# ---------------------------------------------------------------------------------------
# the tiny config, run for real
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    if shutil.which("snakemake") is None:
        pytest.skip("snakemake is not installed")
    work = workdir_with(tmp_path_factory.mktemp("tiny"), TINY_CONFIG)
    proc = snakemake(work, "--cores", "2")
    (work / "snakemake.log").write_text(proc.stdout + proc.stderr)
    return work


@pytest.mark.slow
def test_tiny_run_covers_every_rule(tiny_run):
    """Every rule of the one Snakefile ran, its default target ``all`` included, with one train
    rule per bundle: the seeds 0 and 1 of snr trained in one job. Once trained, each cell is
    a bundle of its own (so that adding seeds never reruns a finished cell)."""
    listed = set(re.findall(r"^(\w+)(?: \(|$)", snakemake(tiny_run, "--list-rules").stdout, re.M))
    ran = set(re.findall(r"^(?:local)?rule (\w+):$", (tiny_run / "snakemake.log").read_text(), re.M))
    planned = plan(load(TINY_CONFIG))
    grouped = bundles(planned.cells, planned.workflow.bundle)
    alone = bundles(planned.cells, planned.workflow.bundle, frozenset(c.id for c in planned.cells))
    assert len(grouped) < len(planned.cells)
    others = {"prepare", "plan", "evaluate", "gradvar", "amortize", "aggregate", "plot", "all"}
    assert ran == others | {f"train_{b.key}" for b in grouped}
    assert listed == others | {f"train_{b.key}" for b in alone}
    summary = json.loads((tiny_run / "results" / "runs" / "snr/gaussian_toy/linear_gaussian/iwae/K2/stl/seed1"
                          / "train.json").read_text())
    assert summary["bundle"] == [0, 1]


@pytest.mark.slow
def test_tiny_run_covers_every_model_family(tiny_run):
    summary = pd.read_csv(tiny_run / "results" / "tables" / "summary.csv")
    cells = plan(load(TINY_CONFIG)).cells
    assert len(summary) == len(cells)
    assert set(summary.model_name) >= {"gmm", "linear_gaussian", "vae"}
    assert summary.estimator.nunique() >= 2
    assert (summary.status == "ok").all(), summary[["cell", "status"]]


@pytest.mark.slow
def test_tiny_run_tables(tiny_run):
    tables = tiny_run / "results" / "tables"
    skipped = plan(load(TINY_CONFIG)).skipped
    expected = {
        "summary.csv": {"cell", "experiment", "dataset", "model", "objective", "K", "estimator", "seed", "status",
                        "test_log_px", "test_log_px_se", "test_nll", "exact_log_px", "ordering_passed",
                        "ordering_reference", "ais_log_px", "bdmc_width"},
        "ordering.csv": {"cell", "passed", "reference", "simulated_reference", "worst", "worst_z", "threshold"},
        "ordering_checks.csv": {"cell", "data", "reference", "lower", "upper", "z", "passed"},
        "sandwich.csv": {"cell", "L_K_eval", "ais_log_px", "ais_gain", "bdmc_lower", "bdmc_upper", "bdmc_width"},
        "gradvar.csv": {"cell", "estimator", "K", "step", "at", "group", "snr_mean", "snr_floor", "frac_at_floor",
                        "var_mean", "relative_bias"},
        "skipped.csv": {"experiment", "dataset", "model", "objective", "K", "estimator", "seed", "reason"},
        "bound_curve.csv": {"cell", "k", "mean", "se"},
        "claims.csv": {"name", "check", "metric", "value", "uncertainty", "tolerance", "result", "schedule"},
    }
    for name, columns in expected.items():
        df = pd.read_csv(tables / name)
        assert columns <= set(df.columns), f"{name} lacks {sorted(columns - set(df.columns))}"
    assert len(pd.read_csv(tables / "skipped.csv")) == len(skipped)
    for name in ("summary.md", "summary.tex", "ordering.md", "sandwich.md", "gradvar.md", "skipped.md", "claims.md",
                 "claims.html"):
        assert (tables / name).stat().st_size > 0, name
    claims = pd.read_csv(tables / "claims.csv")
    assert list(claims.name) == [c["name"] for c in load(TINY_CONFIG)["claims"]]
    assert (claims.result != "not run").all(), claims[["name", "result", "detail"]]


@pytest.mark.slow
def test_tiny_run_bound_ordering_passes(tiny_run):
    ordering = pd.read_csv(tiny_run / "results" / "tables" / "ordering.csv").set_index("cell")
    planned = plan(load(TINY_CONFIG))
    assert len(ordering) == len(planned.cells)
    assert ordering.passed.all(), ordering[~ordering.passed]
    for cell in planned.cells:  # the reference each run's checks used
        row, ais = ordering.loc[cell.id], planned.measurements[cell.id].ais
        exact = cell.model_name in ("gmm", "linear_gaussian")
        assert row.reference == ("exact" if exact else "largest_k"), cell.id
        assert (row.simulated_reference == "bdmc_upper") if ais else pd.isna(row.simulated_reference), cell.id


@pytest.mark.slow
def test_tiny_run_tables_carry_ais_and_bdmc(tiny_run):
    """The runs evaluated with AIS show it beside L_K_eval, and the BDMC sandwich, in
    summary.csv and sandwich.csv."""
    tables = tiny_run / "results" / "tables"
    planned = plan(load(TINY_CONFIG))
    annealed = {c for c, m in planned.measurements.items() if m.ais is not None}
    summary = pd.read_csv(tables / "summary.csv").set_index("cell")
    sandwich = pd.read_csv(tables / "sandwich.csv").set_index("cell")
    assert set(sandwich.index) == annealed
    assert summary.loc[sorted(annealed), ["ais_log_px", "test_log_px", "bdmc_width"]].notna().all().all()
    assert summary.drop(sorted(annealed)).ais_log_px.isna().all()
    assert (sandwich.bdmc_upper >= sandwich.bdmc_lower - 5 * sandwich.bdmc_width_se - 1e-9).all()
    assert "sandwich" in (tables / "sandwich.md").read_text()


@pytest.mark.slow
def test_tiny_run_figures(tiny_run):
    """Figures by experiment and type: figures/<experiment>/<figure type>/<name>.png and .pdf."""
    figures = tiny_run / "results" / "figures"
    pngs = sorted(figures.rglob("*.png"))
    assert {p.relative_to(figures).parts[0] for p in pngs} == set(load(TINY_CONFIG)["experiments"])
    assert {p.parent.name for p in pngs} >= {"nll_vs_k", "bound_curve", "training_curves", "samples", "gmm"}
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000, png.name
        assert png.with_suffix(".pdf").stat().st_size > 0, png.name


@pytest.mark.slow
def test_tiny_run_is_complete_and_edits_rerun_only_affected_jobs(tiny_run, tmp_path):
    """After the run nothing is left to do; a new K value adds only its own cells, and a
    changed setting of one experiment reruns only that experiment's cells."""
    proc = snakemake(tiny_run, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    original = (tiny_run / "config" / "config.yaml").read_text()
    try:
        config = load(TINY_CONFIG)
        config["experiments"]["snr"]["K"].append(16)  # two new cells: reparam and stl at K=16
        workdir_with(tiny_run, config)
        counts = job_counts(snakemake(tiny_run, "-n", "--quiet", "rules").stdout)
        assert train_jobs(counts) == 2 and counts.get("evaluate") == counts.get("gradvar") == 4  # 2 seeds each
        assert "prepare" not in counts

        config = load(TINY_CONFIG)
        config["experiments"]["mnist"]["train"] = {"steps": 31}
        workdir_with(tiny_run, config)
        counts = job_counts(snakemake(tiny_run, "-n", "--quiet", "rules").stdout)
        n_mnist = sum(c.experiment == "mnist" for c in plan(config).cells)
        assert train_jobs(counts) == n_mnist
    finally:
        (tiny_run / "config" / "config.yaml").write_text(original)


@pytest.mark.slow
@pytest.mark.parametrize("edit, rule", [
    (lambda c: c["eval"].update(n_test=20), "evaluate"),
    (lambda c: c["ais"].update(temperatures=5), "evaluate"),
    (lambda c: c["gradvar"].update(draws=3), "gradvar"),
    (lambda c: c["amortization"].update(steps=5), "amortize"),
])
def test_tiny_run_measurement_edits_rerun_only_that_measurement(tiny_run, edit, rule):
    """The training spec alone identifies a trained model: editing a measurement's settings
    plans that measurement for every cell it applies to, and the tables and figures
    downstream, and no train job; changing where jobs run (the device) plans nothing."""
    original = (tiny_run / "config" / "config.yaml").read_text()
    try:
        config = load(TINY_CONFIG)
        edit(config)
        workdir_with(tiny_run, config)
        counts = job_counts(snakemake(tiny_run, "-n", "--quiet", "rules").stdout)
        planned = plan(config)
        expected = len(planned.amortized()) if rule == "amortize" else len(planned.cells)
        if config["ais"] != load(TINY_CONFIG)["ais"]:  # an AIS edit reruns the evaluation of its cells only
            expected = sum(m.ais is not None for m in planned.measurements.values())
        assert {k: v for k, v in counts.items() if k not in ("plan", "all")} == \
            {rule: expected, "aggregate": 1, "plot": 1}, counts
        workdir_with(tiny_run, {**load(TINY_CONFIG), "device": "auto", "threads": 2})
        proc = snakemake(tiny_run, "-n")
        assert "Nothing to be done" in proc.stdout + proc.stderr
    finally:
        (tiny_run / "config" / "config.yaml").write_text(original)


@pytest.mark.slow
def test_tiny_run_measurements_record_their_settings(tiny_run):
    """eval.json, gradvar.csv and amortization.json hold the settings they were computed
    with; cell.json and the checkpoint hold the training spec and nothing else."""
    planned = plan(load(TINY_CONFIG))
    for cell in planned.cells:
        run = tiny_run / "results" / "runs" / cell.id
        m = planned.measurements[cell.id]
        evaluated = json.loads((run / "eval.json").read_text())
        assert evaluated["settings"] == m.eval.to_dict()
        assert (evaluated["ais"]["settings"] == m.ais.to_dict()) if m.ais is not None else "ais" not in evaluated
        gv = pd.read_csv(run / "gradvar.csv")
        assert (gv.draws == m.gradvar.draws).all() and (gv.gradvar_batch_size == m.gradvar.batch_size).all()
        assert (gv["at"] == m.gradvar.at).all()
        assert json.loads((run / "cell.json").read_text()) == cell.to_dict()
        if m.amortize is not None:
            assert json.loads((run / "amortization.json").read_text())["settings"] == m.amortize.to_dict()
    assert set(cell.to_dict()) >= {"train"} and not {"eval", "gradvar", "device", "data_dir"} & set(cell.to_dict())


@pytest.mark.slow
def test_report_renders(tiny_run):
    """The report holds the tables as HTML pages and one category of figures per experiment,
    each figure with the caption of its type."""
    proc = snakemake(tiny_run, "--report", "results/report.html")
    report = tiny_run / "results" / "report.html"
    assert report.stat().st_size > 10_000, proc.stderr
    text = report.read_text()
    for page in ("summary.html", "runs.html", "ordering.html", "gradvar.html", "skipped.html"):
        assert page in text, page
    assert '"name": "summary.csv"' not in text  # tables are pages, not download-only CSVs
    for experiment in load(TINY_CONFIG)["experiments"]:
        assert f'"{experiment}"' in text, experiment
    assert "the bound ordering" in text and "What to look for: samples that look like digits" in text


def test_ci_runs_the_readme_test_command():
    """README.md opens with two commands, set up and run the benchmark, set up and run
    the tests; .ci/run ends with the second one verbatim."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    run_cmd, test_cmd = blocks[0].strip(), blocks[1].strip()
    assert "\n" not in run_cmd and "snakemake" in run_cmd
    assert "\n" not in test_cmd and test_cmd.endswith("pytest")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == test_cmd


SHARED_DATA = ROOT.parent / "shared" / "data"
EXPERIMENT_CONFIGS = sorted((ROOT / "config" / "experiments").glob("*.yaml"))


@pytest.mark.slow
@needs_snakemake
@pytest.mark.skipif(not (SHARED_DATA / "mnist").exists(), reason="needs the verified MNIST copies in ../shared/data")
@pytest.mark.parametrize("config", EXPERIMENT_CONFIGS, ids=lambda p: p.stem)
def test_experiment_config_smoke_variant_runs(tmp_path, config, monkeypatch):
    """Every paper config runs end to end through the pipeline in its tiny smoke variant on
    real data (the verified copies), and produces the published-vs-reproduced table and figure,
    and the claims table: one row per claim, each pass, fail or not run (at 10 steps a claim
    may fail; it must be evaluated, not crash)."""
    monkeypatch.setenv("LVMBENCH_DATA", str(SHARED_DATA))
    snakemake(workdir_with(tmp_path, config), "--cores", "2", "--config", "variant=smoke")
    results = tmp_path / load(config)["variants"]["smoke"]["results"]
    published = pd.read_csv(results / "tables" / "published.csv")
    assert len(published) == len(load(config)["published"])
    assert (published.n_seeds > 0).any(), "no published number was reproduced by the smoke variant"
    assert all(png.stat().st_size > 0 for png in (results / "figures").glob("*/published/published_*.png"))
    assert list((results / "figures").glob("*/published/published_*.png"))
    claims = pd.read_csv(results / "tables" / "claims.csv")
    assert list(claims.name) == [c["name"] for c in load(config)["claims"]]
    assert set(claims.result) <= {"pass", "fail", "not run"} and (claims.result != "not run").any()
    assert (results / "tables" / "claims.html").stat().st_size > 0
    summary = pd.read_csv(results / "tables" / "summary.csv")
    assert (summary.status == "ok").all() and summary.ordering_passed.all()
