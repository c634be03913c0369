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


# ---------------------------------------------------------------------------------------
# resuming: only from a checkpoint that can resume, and never losing a snapshot
# ---------------------------------------------------------------------------------------
def _copy_unfinished(run, tmp_path, cell):
    copy = tmp_path / "runs" / cell.id
    shutil.copytree(run, copy)
    (copy / "train.json").unlink()
    return copy


@pytest.mark.parametrize("damage, reason", [
    (lambda state: state.pop("optimizer"), "older format (it has no optimizer)"),
    (lambda state: state["model"].update(loc=torch.zeros(7, 2)), "another model architecture (the shape of loc"),
    (lambda state: state["model"].pop("loc"), "another model architecture (it differs in loc)"),
    (lambda state: state.update(estimator=[1]), "holds no estimator state"),
], ids=["older format", "another shape", "another parameter set", "no estimator state"])
def test_a_checkpoint_that_cannot_resume_restarts_cleanly(trained, tmp_path, capsys, damage, reason):
    """An older-format checkpoint, or one of another architecture, restarts training (with
    the reason on stderr) instead of ending in KeyError or RuntimeError."""
    cell, run = trained
    copy = _copy_unfinished(run, tmp_path, cell)
    state = torch.load(copy / "checkpoint.pt", weights_only=False)
    damage(state)
    torch.save(state, copy / "checkpoint.pt")
    assert train(cell, copy, progress=False, device="cpu")["steps"] == 4
    assert reason in capsys.readouterr().err
    fresh, again = torch.load(run / "checkpoint.pt", weights_only=False), torch.load(copy / "checkpoint.pt",
                                                                                      weights_only=False)
    assert all(torch.equal(fresh["model"][k], again["model"][k]) for k in fresh["model"])


def test_deleting_snapshots_and_retraining_keeps_every_snapshot(trained, tmp_path, capsys):
    """A resumed run never writes the snapshots before its step again, so a checkpoint whose
    earlier snapshots are gone restarts, and the step-0 snapshot comes back bit-identical."""
    cell, run = trained
    copy = tmp_path / "runs" / cell.id
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "snapshots")
    (copy / "train.json").unlink()
    train(cell, copy, progress=False, device="cpu")
    assert "the snapshot of step 0 is gone; starting afresh" in capsys.readouterr().err
    assert [p.name for p in RunDir(copy).snapshots()] == [p.name for p in RunDir(run).snapshots()]
    for a, b in zip(RunDir(run).snapshots(), RunDir(copy).snapshots()):
        sa, sb = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
        assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])


def test_training_removes_the_temporary_files_of_killed_writers(trained, tmp_path):
    cell, run = trained
    copy = _copy_unfinished(run, tmp_path, cell)
    stale = [copy / ".checkpoint.pt.k3j2.tmp", copy / "snapshots" / ".step00000002.pt.x8.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    train(cell, copy, progress=False, device="cpu")
    assert not any(path.exists() for path in stale)


def test_evaluating_an_unfinished_run_is_refused(trained, tmp_path):
    cell, run = trained
    copy = _copy_unfinished(run, tmp_path, cell)
    with pytest.raises(LvmbenchError, match="training has not finished"):
        load_trained(copy)
    (copy / "train.json").write_text(json.dumps({"cell": Cell.from_dict({**SPEC, "seed": 9}).id}))
    with pytest.raises(LvmbenchError, match="train.json is of the cell .*seed9"):
        load_trained(copy)
