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
to the measurements and the figures, and only once training has finished (``train.json``
written); :meth:`RunDir.is_finished` tells the planner which cells need no training. Where
the directory path, ``cell.json``, the spec stored in a checkpoint and the cell named by a
summary disagree, it stops with one line naming both; so does :meth:`RunDir.check_records`,
which ``lvmbench aggregate`` and ``lvmbench plot`` call before they take a row from a
directory. A file that is truncated or empty is one line too.

The process that trains or measures a run directory holds a lock on it (:func:`holds_run`,
``fcntl.flock``, released by the kernel when the process dies, however it dies): a
trainer holds ``.lock`` exclusively, a measurement holds it shared (evaluate and gradvar
run side by side, never beside a trainer) and its own ``.<command>.lock`` exclusively. A
second writer stops at once with one line naming the holder (pid, host, command). Under
Snakemake (``$LVMBENCH_PARENT_PID``, set by the workflow) a watcher stops the job when the
Snakemake process that started it dies, so no orphan keeps writing.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import functools
import inspect
import os
import re
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator, NamedTuple

import pandas as pd
import torch

from lvmbench import provenance
from lvmbench.data import Dataset, load_dataset
from lvmbench.devices import pick_device
from lvmbench.errors import LvmbenchError
from lvmbench.grid import why_invalid_for
from lvmbench.io import load_json, output_error, save_csv, save_json, save_torch, temporaries
from lvmbench.models import LatentVariableModel, build_model
from lvmbench.objectives import make_objective
from lvmbench.rng import forked_rng, stream_seed
from lvmbench.settings import Cell

#: a cell id at the end of a path: .../<experiment>/<dataset>/<model>/<objective>/K<K>/<estimator>/seed<seed>
CELL_ID = re.compile(r"(?:^|/)([^/]+/[^/]+/[^/]+/[^/]+/K[0-9]+/[^/]+/seed[0-9]+)$")
#: what a checkpoint must hold to resume training from it
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
            self._refuse_if_training()
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

    def resume_state(self, cell: Cell, layout: tuple[int, tuple[str, ...]], model: torch.nn.Module,
                     estimator: torch.nn.Module, snapshot_steps: list[int]) -> dict | None:
        """The checkpoint's state when training can resume from it, else None (training
        starts afresh, with the reason on stderr): it must be readable, belong to ``cell``,
        be of the trainer's ``layout`` (its format number and the keys it holds; an older
        format is not), fit ``model`` and
        ``estimator`` (parameter names and shapes: another architecture does not), and every
        snapshot before its step must still be there, since a resumed run never writes them
        again."""
        if not self.checkpoint.exists():
            return None
        try:
            state = self.load_state(self.checkpoint)
        except LvmbenchError as err:
            print(f"[lvmbench] {err}; starting afresh", file=sys.stderr)
            return None
        why = None
        if state["cell"] != cell.to_dict():
            why = f"belongs to another configuration (it differs in {_spec_difference(state['cell'], cell.to_dict())})"
        elif state.get("format") != layout[0]:
            why = f"is of an older format (format {state.get('format', 1)}, the trainer's is {layout[0]})"
        elif any(k not in state for k in layout[1]):
            why = f"is of an older format (it has no {', '.join(k for k in layout[1] if k not in state)})"
        else:
            why = _misfit(state["model"], model, "model") or _misfit(state["estimator"], estimator, "estimator")
        if why is None:
            lost = [s for s in snapshot_steps if s <= state["step"] and not self.snapshot(s).exists()]
            why = f"is at step {state['step']}, but the snapshot of step {lost[0]} is gone" if lost else None
        if why is not None:
            print(f"[lvmbench] {self.checkpoint} {why}; starting afresh", file=sys.stderr)
            return None
        return state

    def is_finished(self, cell: Cell) -> bool:
        """Whether ``cell`` is trained here: its summary is written and ``cell.json`` is this spec."""
        try:
            return self.file("train.json").exists() and load_json(self.file("cell.json")) == cell.to_dict()
        except (OSError, ValueError):
            return False

    def divergence(self) -> str | None:
        """"diverged at step N" when training stopped on a non-finite loss or gradient, else None."""
        summary = self.read_json("train")
        return f"diverged at step {summary['diverged_at']}" if summary and summary.get("status") == "diverged" \
            else None

    def save_checkpoint(self, state: dict) -> None:
        save_torch(state, self.checkpoint)

    def snapshots(self) -> list[Path]:
        return sorted(self.snapshot_dir.glob("step*.pt"))

    def snapshot(self, step: int) -> Path:
        return self.snapshot_dir / f"step{step:08d}.pt"

    def save_snapshot(self, step: int, state: dict) -> None:
        save_torch(state, self.snapshot(step))

    def clear_snapshots(self) -> None:
        """Drop the snapshots of an earlier configuration (a fresh start)."""
        for stale in self.snapshots():
            stale.unlink()

    # summaries -------------------------------------------------------------------------
    def read_json(self, name: str) -> dict | None:
        """A summary (``train``, ``eval``, ``amortization``), or None when it is not written;
        one line when it is truncated or not a JSON mapping."""
        path = self.file(f"{name}.json")
        if not path.exists():
            return None
        try:
            value = load_json(path)
        except ValueError as err:
            raise LvmbenchError(f"{path} is not readable JSON ({err}); it was truncated or edited: delete it and "
                                f"rerun the job that writes it") from None
        if not isinstance(value, dict):
            raise LvmbenchError(f"{path} is not a JSON mapping; delete it and rerun the job that writes it")
        return value

    def write_json(self, name: str, obj: dict, path: str | Path | None = None) -> Path:
        """Write the summary ``name``.json (or ``path``, a command's ``--out``) with its
        ``provenance`` (the job's device is the summary's ``device``)."""
        return save_json({**obj, "provenance": provenance.record(obj.get("device"))},
                         Path(path) if path else self.file(f"{name}.json"))

    def read_table(self, name: str) -> pd.DataFrame | None:
        """A table (``train``, ``gradvar``), or None when it is not written; one line when it is
        empty or not a CSV table."""
        path = self.file(f"{name}.csv")
        if not path.exists():
            return None
        try:
            return pd.read_csv(path)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
            raise LvmbenchError(f"{path} is empty or not a CSV table ({' '.join(str(err).split())}); delete it "
                                f"and rerun the job that writes it") from None

    def write_table(self, name: str, df: pd.DataFrame) -> Path:
        return save_csv(df, self.file(f"{name}.csv"))

    def check_records(self) -> Cell:
        """The training spec in ``cell.json``, once every record of the directory is known to
        be of that cell: the cell named by train.json, eval.json, amortization.json and
        gradvar.csv, and the spec stored in the checkpoint. A hand-edited cell.json or a file
        copied from another cell would otherwise give a row whose label disagrees with its
        numbers."""
        cell = self.read_cell()
        for name in ("train", "eval", "amortization"):
            record = self.read_json(name)
            if record is not None and record.get("cell") != cell.id:
                raise LvmbenchError(f"{self.file(name + '.json')} is of the cell {record.get('cell')} but "
                                    f"{self.file('cell.json')} is the cell {cell.id}; rerun the cell's jobs")
        table = self.read_table("gradvar")
        if table is not None and "cell" in table and set(table["cell"].astype(str)) - {cell.id}:
            others = sorted(set(table["cell"].astype(str)) - {cell.id})
            raise LvmbenchError(f"{self.file('gradvar.csv')} holds rows of the cell {others[0]} but "
                                f"{self.file('cell.json')} is the cell {cell.id}; rerun gradvar")
        if self.checkpoint.exists():
            _check_spec(self.load_state(self.checkpoint), cell, self.checkpoint, self.file("cell.json"))
        return cell

    # locks -------------------------------------------------------------------------------
    def _holder(self, lock: Path) -> str:
        """Who holds ``lock``, as its holder wrote it."""
        try:
            return lock.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def _in_use(self, holders: list[str]) -> LvmbenchError:
        return LvmbenchError(f"run directory {self.path} is in use by {'; '.join(holders)}; wait for it to "
                             f"finish or stop it")

    @staticmethod
    def _taken(lock: Path, mode: int) -> bool:
        """Whether another holder of ``lock`` keeps it from being flocked in ``mode`` now
        (probed without waiting; a lock file that is missing or unreadable is not taken)."""
        try:
            probe = open(lock)
        except OSError:
            return False
        with probe:
            try:
                fcntl.flock(probe, mode | fcntl.LOCK_NB)
            except OSError:
                return True
        return False

    def _refuse_if_training(self) -> None:
        """Refuse, naming the trainer, when a trainer holds the directory (one that has just
        started holds it before it writes ``cell.json``)."""
        lock = self.path / ".lock"
        if self._taken(lock, fcntl.LOCK_SH):
            raise self._in_use([self._holder(lock)])

    def _measurers(self) -> list[str]:
        """The measurements holding their locks on this directory now."""
        return [self._holder(lock) for lock in sorted(self.path.glob(".*.lock")) if self._taken(lock, fcntl.LOCK_EX)]

    def _flock(self, lock: Path, mode: int, stake: str | None) -> IO | None:
        """``lock`` opened and flocked in ``mode`` without waiting, with the holder of a
        ``stake`` (a command) written in it; None when the directory cannot take a lock
        file (read-only: no one can write in it either). Refused with one line naming the
        holder when taken."""
        try:
            handle = open(lock, "a+")
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                return None
            raise
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            holders = [self._holder(lock)]
            if lock.name == ".lock" and mode == fcntl.LOCK_EX and not self._taken(lock, fcntl.LOCK_SH):
                holders = self._measurers() or holders  # measurements hold it shared, not a trainer
            raise self._in_use(holders) from None
        if stake:
            handle.truncate(0)
            handle.write(_whoami(stake, self.path) + "\n")
            handle.flush()
        return handle

    @contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold the directory for ``command`` (module docstring) until the block ends; a
        trainer also removes the temporary files that killed writers left behind. Nested
        holds by one process are one hold."""
        key = (str(self.path.resolve()), command)
        if key in _HELD:
            yield
            return
        handles = []
        try:
            if command == "train":
                try:
                    self.path.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    raise (output_error(self.path, err) or err) from None
                handles.append(self._flock(self.path / ".lock", fcntl.LOCK_EX, stake=command))
                for stale in temporaries(self.path) + temporaries(self.snapshot_dir):
                    stale.unlink(missing_ok=True)
            elif self.path.is_dir():
                handles.append(self._flock(self.path / ".lock", fcntl.LOCK_SH, stake=None))
                handles.append(self._flock(self.path / f".{command}.lock", fcntl.LOCK_EX, stake=command))
            _HELD.add(key)
            yield
        finally:
            _HELD.discard(key)
            for handle in handles:
                if handle is not None:
                    handle.close()


_HELD: set[tuple[str, str]] = set()  # (run directory, command) held by this process


def _whoami(command: str, path: Path) -> str:
    """The holder of a lock, as a second writer is told: pid, host, command and since when."""
    return (f"pid {os.getpid()} on {socket.gethostname()} (lvmbench {command} {path}, since "
            f"{datetime.datetime.now().isoformat(timespec='seconds')})")


def _misfit(stored: Any, module: torch.nn.Module, what: str) -> str | None:
    """Why a stored state dict does not fit ``module`` (names or shapes), or None."""
    expected = module.state_dict()
    if not isinstance(stored, dict):
        return f"holds no {what} state"
    if set(stored) != set(expected):
        return f"holds another {what} architecture (it differs in {', '.join(sorted(set(stored) ^ set(expected)))})"
    shapes = [k for k, v in expected.items() if getattr(stored[k], "shape", None) != v.shape]
    return f"holds another {what} architecture (the shape of {shapes[0]} differs)" if shapes else None


# ---------------------------------------------------------------------------------------
# the process that trains or measures a run directory
# ---------------------------------------------------------------------------------------
def _start_time(pid: int) -> str | None:
    """A mark of the live process ``pid`` that changes if the pid is reused (its start time
    in /proc), or None when it is gone or a zombie; where there is no /proc, whether it is
    alive."""
    if not Path("/proc/self/stat").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "alive"
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


_WATCHING: list[int] = []


def watch_parent(interval: float = 1.0) -> None:
    """When ``$LVMBENCH_PARENT_PID`` names the Snakemake process that started this job (the
    workflow sets it), stop this process with SIGTERM once that process is gone: a job whose
    Snakemake was killed must not live on as an orphan writing its run directory. Atomic
    writes keep every file whole; an interrupted training resumes from its last checkpoint."""
    text = os.environ.get("LVMBENCH_PARENT_PID", "")
    if not text.isdigit() or _WATCHING:
        return
    pid = int(text)
    mark = _start_time(pid)

    def watch() -> None:
        while _start_time(pid) == mark and mark is not None:
            time.sleep(interval)
        print(f"[lvmbench] the Snakemake process {pid} that started this job is gone; stopping (an interrupted "
              f"training resumes from its last checkpoint)", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    _WATCHING.append(pid)
    threading.Thread(target=watch, name="lvmbench-parent-watch", daemon=True).start()


def holds_run(command: str, run: str = "run") -> Callable[[Callable], Callable]:
    """Decorate the function that trains (``command`` "train") or measures a run directory,
    given as its argument named ``run``: the call holds the directory's lock
    (:meth:`RunDir.lock`) and, under Snakemake, watches its parent (:func:`watch_parent`)."""

    def decorate(func: Callable) -> Callable:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def held(*args, **kwargs):
            path = signature.bind(*args, **kwargs).arguments[run]
            watch_parent()
            with RunDir(path).lock(command):
                return func(*args, **kwargs)

        return held

    return decorate


def _check_spec(state: dict, cell: Cell, path: Path, cell_json: Path) -> None:
    """The spec stored in a checkpoint or snapshot at ``path`` is ``cell``."""
    if state["cell"] != cell.to_dict():
        stored = state["cell"] if isinstance(state["cell"], dict) else {}
        try:
            stored_id = Cell.from_dict(stored).id
        except LvmbenchError:  # a spec of an older layout
            stored_id = "of an older layout"
        raise LvmbenchError(f"{path} holds the cell {stored_id} but {cell_json} is the cell {cell.id} "
                            f"(they differ in {_spec_difference(stored, cell.to_dict())}); retrain the cell")


def build(cell: Cell, data: Dataset) -> LatentVariableModel:
    """The cell's model, initialised from the training data with the cell's ``model_init``
    random stream (on a fork: the global RNG is left as it was). Refuses a cell that cannot
    run."""
    with forked_rng(torch.device("cpu"), stream_seed(cell.seed, "model_init")):
        model = build_model(cell.model_name, data.dim, **cell.model_options)
        objective = make_objective(cell.objective_name, **cell.objective_options)
        reason = why_invalid_for(cell.model_name, model, objective, cell.K, cell.estimator_name, dataset=cell.dataset)
        if reason:
            raise LvmbenchError(f"cell {cell.id}: {reason}")
        model.init_from_data(data.train)
    return model


def setup(cell: Cell, device: torch.device | str | None = None,
          data_dir: str | None = None) -> tuple[Dataset, LatentVariableModel, torch.device]:
    """Load the cell's data and build its model (:func:`build`) on the device."""
    device = device if isinstance(device, torch.device) else pick_device(device)
    data = load_dataset(cell.dataset, data_dir, **cell.dataset_options)
    return data, build(cell, data).to(device), device


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

    Training must have finished (``train.json``, of this cell): a half-trained model is
    never measured. The directory path, ``cell.json`` and the spec stored in the checkpoint
    must agree; the global RNG is left as it was."""
    rd = RunDir(run)
    cell = rd.read_cell()
    finished = rd.read_json("train")
    if finished is None:
        raise LvmbenchError(f"{rd.path}: training has not finished (no train.json); run lvmbench train on it "
                            f"first, which resumes from its last checkpoint")
    if finished.get("cell") != cell.id:
        raise LvmbenchError(f"{rd.file('train.json')} is of the cell {finished.get('cell')} but "
                            f"{rd.file('cell.json')} is the cell {cell.id}; retrain the cell")
    path = Path(snapshot) if snapshot else rd.checkpoint
    state = rd.load_state(path)
    _check_spec(state, cell, path, rd.file("cell.json"))
    data, model, _ = setup(cell, device, data_dir)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as err:  # another architecture, or not a state dict
        raise LvmbenchError(f"{path} does not fit the model of cell {cell.id} "
                            f"({str(err).splitlines()[0]}); retrain the cell") from None
    return Trained(cell, data, model, state.get("estimator"), int(state.get("step", 0)))
