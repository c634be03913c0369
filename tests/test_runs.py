"""Run directories (lvmbench.runs): the one reader and writer of a cell's files. The path,
cell.json and the spec stored in the checkpoint must agree; loading a trained model leaves
the global RNG alone; only the training spec is stored."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lvmbench.cli import main
from lvmbench.errors import LvmbenchError
from lvmbench.runs import RunDir, load_trained
from lvmbench.settings import Cell
from lvmbench.train import train

SPEC = {"experiment": "r", "dataset": "gmm2d", "model": "gmm", "objective": "iwae", "K": 2, "estimator": "score",
        "seed": 0, "dataset_options": {"n_train": 64, "n_test": 16}, "model_options": {"hidden": [4]},
        "train": {"steps": 4, "batch_size": 16, "log_every": 2, "checkpoint_every": 2}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run laid out as <root>/runs/<cell id>."""
    cell = Cell.from_dict(SPEC)
    run = tmp_path_factory.mktemp("root") / "runs" / cell.id
    train(cell, run, progress=False, device="cpu")
    return cell, run


def test_load_trained_leaves_the_global_rng_alone(trained):
    cell, run = trained
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    loaded = load_trained(run, device="cpu")
    assert torch.equal(torch.rand(3), expected)
    assert loaded.cell == cell and loaded.step == 4 and loaded.estimator_state == {}


def test_cell_json_holds_the_training_spec_only(trained):
    cell, run = trained
    stored = json.loads((run / "cell.json").read_text())
    assert stored == cell.to_dict()
    assert set(stored) == {"experiment", "dataset", "model", "model_name", "objective", "objective_name", "K",
                           "estimator", "estimator_name", "seed", "dataset_options", "model_options",
                           "objective_options", "estimator_options", "train"}
    assert torch.load(run / "checkpoint.pt", weights_only=False)["cell"] == stored
    for snap in RunDir(run).snapshots():
        assert torch.load(snap, weights_only=False)["cell"] == stored


def test_a_copied_directory_names_both_cells(trained, tmp_path, capsys):
    """A run directory copied to the path of another cell is refused by every reader with
    one line naming both cells."""
    cell, run = trained
    other = Cell.from_dict({**SPEC, "seed": 1})
    copy = tmp_path / "runs" / other.id
    shutil.copytree(run, copy)
    with pytest.raises(LvmbenchError, match=f"is the cell {other.id}, but its spec is the cell {cell.id}"):
        load_trained(copy)
    assert main(["evaluate", str(copy), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert other.id in err and cell.id in err and len(err.strip().splitlines()) == 1
    with pytest.raises(LvmbenchError, match="is the cell"):
        train(cell, copy, progress=False, device="cpu")


def test_a_hand_edited_cell_json_names_both_specs(trained, tmp_path):
    """cell.json edited by hand (another seed) no longer matches the checkpoint."""
    cell, run = trained
    copy = tmp_path / "free-form-name"
    shutil.copytree(run, copy)
    edited = {**cell.to_dict(), "seed": 5}
    (copy / "cell.json").write_text(json.dumps(edited))
    with pytest.raises(LvmbenchError) as err:
        load_trained(copy)
    message = str(err.value)
    assert cell.id in message and Cell.from_dict(edited).id in message and "seed" in message
    assert "\n" not in message


def test_an_older_checkpoint_restarts_training(trained, tmp_path, capsys):
    """A checkpoint whose stored spec holds measurement settings (the layout before the
    training spec was split off) is another configuration: training starts afresh."""
    cell, run = trained
    copy = tmp_path / "runs" / cell.id
    shutil.copytree(run, copy)
    state = torch.load(copy / "checkpoint.pt", weights_only=False)
    state["cell"] = {**state["cell"], "eval": {"K_eval": 5000}, "device": "auto"}
    torch.save(state, copy / "checkpoint.pt")
    (copy / "train.json").unlink()
    assert train(cell, copy, progress=False, device="cpu")["steps"] == 4
    assert "belongs to another configuration (it differs in device, eval)" in capsys.readouterr().err
    assert torch.load(copy / "checkpoint.pt", weights_only=False)["cell"] == cell.to_dict()
