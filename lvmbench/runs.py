"""Run directories: the one reader and writer of a cell's files.

One directory per cell, ``<results>/runs/<cell id>/``, with the cell id
``<experiment>/<dataset>/<model>/<objective>/K<K>/<estimator>/seed<seed>``:

======================  ===================================================================
``cell.json``           the training spec (:class:`lvmbench.settings.Cell`), nothing else
``checkpoint.pt``       the resumable training state; holds the spec
``snapshots/``          ``step<N>.pt`` parameter snapshots for gradvar; each holds the spec
``train.csv``           the training curve; ``train.json`` its summary (written last)
``eval.json``           evaluation, with the settings it was computed with
``gradvar.csv``         gradient variance, with its settings in columns
``amortization.json``   the amortization gap and its settings; ``amortization.csv`` per point
``logs/``               each job's log and benchmark
======================  ===================================================================

:class:`RunDir` writes and reads all of these; every JSON summary it writes records how it
was made (:func:`lvmbench.provenance.record`: versions, git commit, device, host, SLURM job,
start and end times) under ``provenance``. :func:`load_trained` hands a trained model
to the measurements and the figures. Where the directory path, ``cell.json`` and the spec
stored in a checkpoint disagree, it stops with one line naming both.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch

from lvmbench import provenance
from lvmbench.data import Dataset, load_dataset
from lvmbench.devices import pick_device
from lvmbench.errors import LvmbenchError
from lvmbench.grid import why_invalid_for
from lvmbench.io import load_json, save_csv, save_json, save_torch
from lvmbench.models import LatentVariableModel, build_model
from lvmbench.objectives import make_objective
from lvmbench.rng import forked_rng
from lvmbench.settings import Cell

#: a cell id at the end of a path: .../<experiment>/<dataset>/<model>/<objective>/K<K>/<estimator>/seed<seed>
CELL_ID = re.compile(r"(?:^|/)([^/]+/[^/]+/[^/]+/[^/]+/K[0-9]+/[^/]+/seed[0-9]+)$")


def _spec_difference(a: dict, b: dict) -> str:
    """The keys in which two training specs differ, for a message."""
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(keys) or "nothing"


class RunDir:
    """The files of one run directory (module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def snapshot_dir(self) -> Path:
        return self.path / "snapshots"

    # the spec --------------------------------------------------------------------------
    def path_id(self) -> str | None:
        """The cell id the path spells, when it is laid out as ``runs/<cell id>``; else None
        (a directory named freely, e.g. by ``lvmbench train --out``)."""
        m = CELL_ID.search(self.path.as_posix().rstrip("/"))
        return m.group(1) if m else None

    def check_path(self, cell: Cell) -> None:
        """A directory laid out as a cell id must hold that cell."""
        spelled = self.path_id()
        if spelled is not None and spelled != cell.id:
            raise LvmbenchError(f"run directory {self.path} is the cell {spelled}, but its spec is the cell {cell.id}")

    def write_cell(self, cell: Cell) -> None:
        self.check_path(cell)
        save_json(cell.to_dict(), self.file("cell.json"))

    def read_cell(self) -> Cell:
        """The training spec in ``cell.json``, checked against the path."""
        path = self.file("cell.json")
        if not path.exists():
            raise LvmbenchError(f"{self.path} is not a run directory: no cell.json (write it with lvmbench train)")
        try:
            cell = Cell.from_dict(load_json(path))
        except (ValueError, TypeError) as err:
            raise LvmbenchError(f"{path} is not a readable training spec ({type(err).__name__}: {err})") from None
        self.check_path(cell)
        return cell

    # checkpoints and snapshots ---------------------------------------------------------
    @staticmethod
    def load_state(path: Path) -> dict:
        """A checkpoint or snapshot file's state, or one clear line when it is unreadable."""
        if not path.exists():
            raise LvmbenchError(f"no checkpoint at {path}; train the cell first (lvmbench train)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # truncated or corrupted
            raise LvmbenchError(f"checkpoint {path} is unreadable ({type(err).__name__}); retrain the cell "
                                f"(lvmbench train restarts it cleanly)") from None
        if not isinstance(state, dict) or "cell" not in state or "model" not in state:
            raise LvmbenchError(f"checkpoint {path} is not an lvmbench checkpoint; retrain the cell")
        return state

    def resume_state(self, cell: Cell) -> dict | None:
        """The checkpoint's state when it is readable and belongs to ``cell``, else None
        (training starts afresh, with the reason on stderr)."""
        if not self.checkpoint.exists():
            return None
        try:
            state = self.load_state(self.checkpoint)
        except LvmbenchError as err:
            print(f"[lvmbench] {err}; starting afresh", file=sys.stderr)
            return None
        if state["cell"] != cell.to_dict():
            print(f"[lvmbench] {self.checkpoint} belongs to another configuration (it differs in "
                  f"{_spec_difference(state['cell'], cell.to_dict())}); starting afresh", file=sys.stderr)
            return None
        return state

    def save_checkpoint(self, state: dict) -> None:
        save_torch(state, self.checkpoint)

    def snapshots(self) -> list[Path]:
        return sorted(self.snapshot_dir.glob("step*.pt"))

    def save_snapshot(self, step: int, state: dict) -> None:
        save_torch(state, self.snapshot_dir / f"step{step:08d}.pt")

    def clear_snapshots(self) -> None:
        """Drop the snapshots of an earlier configuration (a fresh start)."""
        for stale in self.snapshots():
            stale.unlink()

    # summaries -------------------------------------------------------------------------
    def read_json(self, name: str) -> dict | None:
        """A summary (``train``, ``eval``, ``amortization``), or None when it is not written."""
        path = self.file(f"{name}.json")
        return load_json(path) if path.exists() else None

    def write_json(self, name: str, obj: dict) -> Path:
        """Write the summary ``name``.json with its ``provenance`` (the job's device is the
        summary's ``device``)."""
        return save_json({**obj, "provenance": provenance.record(obj.get("device"))}, self.file(f"{name}.json"))

    def read_table(self, name: str) -> pd.DataFrame | None:
        path = self.file(f"{name}.csv")
        return pd.read_csv(path) if path.exists() else None

    def write_table(self, name: str, df: pd.DataFrame) -> Path:
        return save_csv(df, self.file(f"{name}.csv"))


def setup(cell: Cell, device: torch.device | str | None = None,
          data_dir: str | None = None) -> tuple[Dataset, LatentVariableModel, torch.device]:
    """Load the cell's data and build its model on the device, seeded with the cell's seed
    (the global RNG is seeded here; the trainer's sampling continues from it). Refuses a cell
    that cannot run."""
    device = device if isinstance(device, torch.device) else pick_device(device)
    data = load_dataset(cell.dataset, data_dir, **cell.dataset_options)
    torch.manual_seed(cell.seed)
    model = build_model(cell.model_name, data.dim, **cell.model_options)
    objective = make_objective(cell.objective_name, **cell.objective_options)
    reason = why_invalid_for(cell.model_name, model, objective, cell.K, cell.estimator_name, dataset=cell.dataset)
    if reason:
        raise LvmbenchError(f"cell {cell.id}: {reason}")
    model.init_from_data(data.train)
    return data, model.to(device), device


class Trained(NamedTuple):
    """A trained (or snapshotted) model with its spec, its data, the estimator's trained
    state (None when stateless) and the step it was saved at."""

    cell: Cell
    data: Dataset
    model: LatentVariableModel
    estimator_state: dict | None
    step: int


def load_trained(run: str | Path, snapshot: str | Path | None = None, device: torch.device | str | None = None,
                 data_dir: str | None = None) -> Trained:
    """The trained model of a run directory (or one of its snapshots), on ``device``.

    The directory path, ``cell.json`` and the spec stored in the checkpoint must agree; the
    global RNG is left as it was."""
    rd = RunDir(run)
    cell = rd.read_cell()
    path = Path(snapshot) if snapshot else rd.checkpoint
    state = rd.load_state(path)
    if state["cell"] != cell.to_dict():
        stored = state["cell"] if isinstance(state["cell"], dict) else {}
        try:
            stored_id = Cell.from_dict(stored).id
        except LvmbenchError:  # a spec of an older layout
            stored_id = "of an older layout"
        raise LvmbenchError(f"{path} holds the cell {stored_id} but {rd.file('cell.json')} is the cell {cell.id} "
                            f"(they differ in {_spec_difference(stored, cell.to_dict())}); retrain the cell")
    with forked_rng(torch.device("cpu")):
        data, model, _ = setup(cell, device, data_dir)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise LvmbenchError(f"{path} does not fit the model of cell {cell.id} "
                            f"({str(err).splitlines()[0]}); retrain the cell") from None
    return Trained(cell, data, model, state.get("estimator"), int(state.get("step", 0)))
