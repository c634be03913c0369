"""Progress in job logs (lvmbench.progress): with no terminal, a plain line every
$LVMBENCH_PROGRESS_EVERY seconds and one at the end, from training and from every
measurement."""

from __future__ import annotations

import io
import re

import pytest

from lvmbench.grid import plan
from lvmbench.measure.evaluation import evaluate_run
from lvmbench.measure.gradvar import gradvar_run
from lvmbench.progress import Progress, track
from lvmbench.settings import EvalSettings, GradvarSettings
from lvmbench.train import train

LINE = re.compile(r"^\[lvmbench\] (.+): (\w[\w ]*) (\d+)/(\d+) \((\d+)%\)(.*), ([\d.]+) .+/s, ETA (\S+)$")


def test_progress_writes_one_line_per_interval_and_one_at_the_end(monkeypatch):
    monkeypatch.setenv("LVMBENCH_PROGRESS_EVERY", "0")
    out = io.StringIO()
    p = Progress(4, "demo", unit="step", stream=out)
    for _ in range(4):
        p.update(bound=-1.5)
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and all(LINE.match(line) for line in lines), lines
    assert LINE.match(lines[-1]).group(3, 4, 5) == ("4", "4", "100") and "bound -1.50" in lines[-1]
    quiet = io.StringIO()
    q = Progress(3, "demo", stream=quiet, enabled=False)
    q.update()
    q.close()
    assert quiet.getvalue() == ""


def test_track_yields_every_item():
    assert list(track(range(5), 5, "demo", enabled=False)) == list(range(5))


@pytest.fixture
def trained(tmp_path, monkeypatch):
    config = {"experiments": {"p": {"datasets": ["gmm2d"], "models": {"gmm": {"components": 3, "hidden": [8]}},
                                    "objectives": ["iwae"], "K": [3], "estimators": ["score"],
                                    "dataset_options": {"gmm2d": {"n_train": 200, "n_test": 100}}}},
              "train": {"steps": 20, "batch_size": 50, "snapshots": 2}}
    cell = plan(config).cells[0]
    run = tmp_path / "run"
    train(cell, run, progress=False, device="cpu")
    monkeypatch.setenv("LVMBENCH_PROGRESS_EVERY", "0")
    return run


def test_measurements_log_progress_lines(trained, capsys):
    """evaluate and gradvar, as pipeline jobs run them (stderr not a terminal), write
    progress lines that name the measurement and count its batches to the end."""
    evaluate_run(trained, EvalSettings(K_eval=30, k_grid=(1, 30), n_test=100, batch_size=25), device="cpu")
    gradvar_run(trained, GradvarSettings(draws=10, batch_size=20), device="cpu")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[lvmbench]")]
    evaluate = [m for m in map(LINE.match, lines) if m and m.group(1) == "evaluate"]
    assert evaluate and evaluate[-1].group(3, 4) == ("4", "4")  # 100 points in batches of 25
    assert any(m and m.group(1).startswith("gradvar ") for m in map(LINE.match, lines)), lines
