"""Tests of lvmbench.aggregate and lvmbench.plots on tiny real runs made through the CLI.

Three gmm2d cells (two seeds at K=2, one at K=1) and one gaussian_toy cell are trained,
evaluated and measured with ``lvmbench.cli.main``; two more are then doctored: a third
seed of the K=2 cell with a NaN test log p(x), and a second gaussian_toy seed without
train.json (training never finished).
"""

import html
import json
import math
import platform
import shutil

import pandas as pd
import pytest
import torch

import lvmbench
from lvmbench.cli import main
from lvmbench.report.aggregate import GROUP_KEYS, SUMMARY_COLUMNS
from lvmbench.report.plots import plot_all

TRAIN = {"steps": 20, "batch_size": 50, "lr": 0.01, "log_every": 5}
CELLS = {
    "gmm_k2_s0": ("gmm2d", "gmm", 2, "score", 0),
    "gmm_k2_s1": ("gmm2d", "gmm", 2, "score", 1),
    "gmm_k1_s0": ("gmm2d", "gmm", 1, "score", 0),
    "lg_k2_s0": ("gaussian_toy", "linear_gaussian", 2, "reparam", 0),
    "gmm_k2_s7_nan": ("gmm2d", "gmm", 2, "score", 7),  # its metric is made NaN below
    "lg_k2_s3_untrained": ("gaussian_toy", "linear_gaussian", 2, "reparam", 3),  # its train.json is removed
}


def _edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for name, (dataset, model, K, estimator, seed) in CELLS.items():
        run = str(root / name)
        cell = {"experiment": "t", "dataset": dataset, "model": model, "objective": "iwae", "K": K,
                "estimator": estimator, "seed": seed, "train": TRAIN}
        assert main(["train", "--quiet", "--out", run, "--cell", json.dumps(cell), "--device", "cpu"]) == 0
        assert main(["evaluate", run, "--K-eval", "50", "--k-grid", "1,5,50", "--n-test", "100", "--quiet"]) == 0
        assert main(["gradvar", run, "--draws", "5", "--estimators", estimator, "--quiet"]) == 0
        dirs.append(root / name)
    _edit_json(root / "gmm_k2_s7_nan" / "eval.json", log_px=math.nan)
    for f in ("train.json", "eval.json", "gradvar.csv"):
        (root / "lg_k2_s3_untrained" / f).unlink()
    return dirs


@pytest.fixture(scope="module")
def tables(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    skipped = out.parent / "skipped_in.csv"
    pd.DataFrame([{"experiment": "t", "dataset": "gmm2d", "model": "gmm", "objective": "iwae", "K": 2,
                   "estimator": "reparam", "seed": 0, "reason": "gmm has discrete latents"}]).to_csv(skipped,
                                                                                                 index=False)
    assert main(["aggregate", *map(str, runs), "--out", str(out), "--skipped", str(skipped)]) == 0
    return out


def test_tables_have_documented_columns(tables):
    for name in ("summary.md", "summary.tex", "ordering.md", "gradvar.md", "skipped.md"):
        assert (tables / name).stat().st_size > 0, name
    summary = pd.read_csv(tables / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert len(summary) == 6
    assert list(pd.read_csv(tables / "bound_curve.csv").columns) == ["cell", "k", "mean", "se"]
    ordering = pd.read_csv(tables / "ordering.csv")
    assert {"cell", "passed", "worst_z", "worst", "threshold", "n_checks"} <= set(ordering.columns)
    assert len(ordering) == 5  # every evaluated run
    gv = pd.read_csv(tables / "gradvar.csv")
    assert {"estimator", "K", "group", "snr_mean", "var_mean", "step", "cell", "skipped", "final_step"} <= set(gv.columns)
    assert set(gv.group) == {"decoder", "encoder"}
    assert pd.read_csv(tables / "skipped.csv").reason.tolist() == ["gmm has discrete latents"]
    row = summary.set_index("cell").loc["t/gmm2d/gmm/iwae/K2/score/seed0"]
    assert row.bound_curve.startswith("1:") and row.bound_curve.count(";") == 2
    assert math.isfinite(row.exact_log_px) and row.test_nll == pytest.approx(-row.test_log_px)
    assert r"gaussian\_toy" in (tables / "summary.tex").read_text()


def test_every_page_is_markdown_and_html(tables):
    """The report shows the HTML pages: the same title, text and rows as the Markdown."""
    for name in ("summary", "runs", "ordering", "gradvar", "skipped"):
        md, page = (tables / f"{name}.md").read_text(), (tables / f"{name}.html").read_text()
        title = md.splitlines()[0].removeprefix("# ")
        assert page.startswith("<!DOCTYPE html>") and f"<h1>{html.escape(title)}</h1>" in page
        rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
        assert page.count("<tr>") == len(rows)  # header and body rows of every table
    runs_md = (tables / "runs.md").read_text()
    assert "t/gmm2d/gmm/iwae/K2/score/seed7" in runs_md and "not trained" in runs_md
    assert 'class="n">' in (tables / "runs.html").read_text()  # numbers right-aligned


def test_runs_record_their_provenance(tables, runs):
    """The runs were trained and evaluated through the CLI: train.json and eval.json hold how
    they were made, and summary.csv carries the version, the commit and the device."""
    for name in ("train.json", "eval.json"):
        made = json.loads((runs[0] / name).read_text())["provenance"]
        assert made["lvmbench_version"] == lvmbench.__version__ and made["device_name"] == "cpu"
        assert made["torch"] == torch.__version__ and made["python"] == platform.python_version()
        assert {"git_commit", "git_dirty", "cuda", "cudnn", "nvidia_driver", "host", "slurm_job_id"} <= set(made)
        assert made["started"] <= made["finished"]
    summary = pd.read_csv(tables / "summary.csv").set_index("cell")
    row = summary.loc["t/gmm2d/gmm/iwae/K2/score/seed0"]
    assert row.lvmbench_version == lvmbench.__version__ and row.device == "cpu"
    assert pd.isna(summary.loc["t/gaussian_toy/linear_gaussian/iwae/K2/reparam/seed3", "lvmbench_version"])


def test_seeds_grouped_and_bad_runs_excluded(tables):
    summary = pd.read_csv(tables / "summary.csv").set_index("cell")
    assert summary.loc["t/gmm2d/gmm/iwae/K2/score/seed7", "status"] == "non-finite log p(x)"
    assert summary.loc["t/gaussian_toy/linear_gaussian/iwae/K2/reparam/seed3", "status"] == "not trained"
    assert (summary.drop(["t/gmm2d/gmm/iwae/K2/score/seed7",
                          "t/gaussian_toy/linear_gaussian/iwae/K2/reparam/seed3"]).status == "ok").all()

    grouped = pd.read_csv(tables / "summary_grouped.csv").set_index(GROUP_KEYS)
    g = grouped.loc[("t", "gmm2d", "gmm", "iwae", 2, "score")]
    seeds = summary.loc[["t/gmm2d/gmm/iwae/K2/score/seed0", "t/gmm2d/gmm/iwae/K2/score/seed1"], "test_log_px"]
    assert g.n_seeds == 2 and g.n_excluded == 1
    assert g.log_px_mean == pytest.approx(seeds.mean()) and g.log_px_sd == pytest.approx(seeds.std())
    assert g.nll_mean == pytest.approx(-seeds.mean())
    assert pd.isna(grouped.loc[("t", "gmm2d", "gmm", "iwae", 1, "score"), "log_px_sd"])  # one seed: no sd
    md = (tables / "summary.md").read_text()
    assert "±" in md and "seed7" in md and "not trained" in md


def test_plot_all_writes_png_and_pdf(tables, runs, tmp_path):
    """Each experiment's figures by type: <out>/<experiment>/<figure type>/<name>.png and .pdf."""
    written = plot_all(tables, runs, tmp_path / "figs")
    names = {p.relative_to(tmp_path / "figs").with_suffix("").as_posix() for p in written}
    assert {"t/nll_vs_k/nll_vs_k_t", "t/training_curves/training_curves_t",
            "t/bound_curve/bound_curve_t_gmm2d_gmm_iwae", "t/bound_curve/bound_curve_t_gaussian_toy_linear_gaussian_iwae",
            "t/snr_vs_k/snr_vs_k_t_gmm2d_gmm_iwae", "t/gmm/gmm_t_gmm2d_gmm_iwae"} <= names
    assert not any("/samples/" in n for n in names)  # no binary-image runs
    assert not any("gaussian_toy" in n for n in names if "/snr_vs_k/" in n)  # a single K
    for name in names:
        png, pdf = tmp_path / "figs" / f"{name}.png", tmp_path / "figs" / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000


@pytest.mark.parametrize("edit", ["cell.json seed", "eval.json of another cell", "checkpoint of another cell",
                                  "truncated train.json", "empty gradvar.csv"])
def test_a_directory_whose_records_disagree_is_refused(runs, tmp_path, capsys, edit):
    """A hand-edited cell.json, or a file copied from another cell, would give a row whose
    label disagrees with its numbers; a truncated or empty record would end in a traceback.
    aggregate stops with one line naming the file, and writes no table."""
    copy = tmp_path / "copy"
    shutil.copytree(runs[0], copy)
    if edit == "cell.json seed":
        _edit_json(copy / "cell.json", seed=5)
    elif edit == "eval.json of another cell":
        shutil.copy(runs[1] / "eval.json", copy / "eval.json")
    elif edit == "checkpoint of another cell":
        shutil.copy(runs[1] / "checkpoint.pt", copy / "checkpoint.pt")
    elif edit == "truncated train.json":
        (copy / "train.json").write_text((copy / "train.json").read_text()[:20])
    else:
        (copy / "gradvar.csv").write_text("")
    assert main(["aggregate", str(copy), "--out", str(tmp_path / "tables")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and str(copy) in err, err
    assert not (tmp_path / "tables").exists()
