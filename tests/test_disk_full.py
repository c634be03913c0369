"""A full disk loses nothing: every command that writes stops with one line naming the file
it could not write and saying the disk is full; no half-written file takes a final name,
no temporary file stays behind, and aggregate's set of tables is replaced as a whole or
not at all.

The disk is a small tmpfs, mounted for each test and filled to a chosen number of free
bytes; mounting needs root (CI runs as root), so without it the tests are skipped, saying
why. The trained run they measure lives on the ordinary disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lvmbench.cli import main

CELL = {"experiment": "d", "dataset": "gaussian_toy", "model": "linear_gaussian", "objective": "iwae", "K": 2,
        "estimator": "reparam", "seed": 0, "dataset_options": {"dim": 3, "n_train": 40, "n_test": 20},
        "train": {"steps": 4, "batch_size": 10, "log_every": 2, "checkpoint_every": 2}}
#: a cell whose snapshots (about 100 KB each) do not fit in the room left on the disk
BIG = {"experiment": "d", "dataset": "gmm2d", "model": "gmm", "objective": "iwae", "K": 2, "estimator": "score",
       "seed": 0, "dataset_options": {"n_train": 64, "n_test": 16}, "model_options": {"hidden": [4000]},
       "train": {"steps": 4, "batch_size": 16, "log_every": 2, "checkpoint_every": 2}}


class Disk:
    """A mounted tmpfs and a filler file that leaves a chosen number of bytes free."""

    def __init__(self, path: Path):
        self.path = path
        self.filler = path / "filler"

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        self.filler.unlink(missing_ok=True)
        with open(self.filler, "wb") as f:
            try:
                f.write(b"\0" * max(self.free() - leave, 0))
            except OSError:  # the disk was full before the last byte
                pass


@pytest.fixture
def disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path = tmp_path / "disk"
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield Disk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A trained, evaluated and measured run on the ordinary disk."""
    run = tmp_path_factory.mktemp("full") / "run"
    assert main(["train", "--quiet", "--cell", json.dumps(CELL), "--out", str(run), "--device", "cpu"]) == 0
    assert main(["evaluate", str(run), "--quiet", "--K-eval", "10", "--k-grid", "1,10"]) == 0
    assert main(["gradvar", str(run), "--quiet", "--draws", "2", "--batch-size", "4"]) == 0
    return run


def _disk_full_line(err: str, path: Path) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"cannot write {path}" in lines[0] and "the disk is full" in lines[0], lines[0]
    return lines[0]


def _no_temporaries(root: Path) -> None:
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")], sorted(root.rglob("*"))


@pytest.mark.slow
def test_train_says_the_disk_is_full_in_its_job_log(disk):
    """As the workflow runs it: the log, on the full disk too, holds the one line; every file
    written before is whole, and the run resumes once there is room."""
    out, log = disk.path / "run", disk.path / "train.log"
    disk.fill(leave=64 * 1024)
    command = [sys.executable, "-m", "lvmbench", "train", "--quiet", "--cell", json.dumps(BIG), "--out", str(out)]
    with open(log, "w") as f:
        proc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
    assert proc.returncode == 2
    line = _disk_full_line(log.read_text(), out)
    assert line.startswith("lvmbench train: error:") and "nothing was replaced" in line
    _no_temporaries(disk.path)
    assert json.loads((out / "cell.json").read_text())["model_options"] == {"hidden": [4000]}
    disk.filler.unlink()
    assert subprocess.run(command, capture_output=True).returncode == 0  # room again: the run completes


@pytest.mark.parametrize("command, output", [
    (["evaluate", "RUN", "--quiet", "--K-eval", "10", "--k-grid", "1,10", "--out", "DISK/eval.json"], "eval.json"),
    (["gradvar", "RUN", "--quiet", "--draws", "2", "--batch-size", "4", "--out", "DISK/gradvar.csv"], "gradvar.csv"),
    (["amortize", "RUN", "--quiet", "--n-test", "4", "--steps", "2", "--out", "DISK/amortization.json"],
     "amortization.json"),
    (["prepare", "gaussian_toy", "--out", "DISK/data/gaussian_toy.json"], "data/gaussian_toy.json"),
    (["plot", "TABLES", "--runs", "RUN", "--out", "DISK/figures"], "figures/"),
], ids=["evaluate", "gradvar", "amortize", "prepare", "plot"])
def test_every_writer_says_the_disk_is_full(disk, run, tmp_path, capsys, command, output):
    tables = tmp_path / "tables"
    assert main(["aggregate", str(run), "--out", str(tables)]) == 0
    disk.fill()
    capsys.readouterr()
    argv = [a.replace("RUN", str(run)).replace("DISK", str(disk.path)).replace("TABLES", str(tables))
            for a in command]
    assert main(argv) == 2
    line = _disk_full_line(capsys.readouterr().err, disk.path / output)
    assert line.startswith(f"lvmbench {command[0]}: error:")
    _no_temporaries(disk.path)
    assert sorted(p.name for p in disk.path.iterdir()) in (["filler"], ["data", "filler"], ["figures", "filler"])


def test_aggregate_replaces_its_tables_as_a_whole_or_not_at_all(disk, run, tmp_path, capsys):
    """With no room for the new set, the old set stays, every table byte for byte (the issue
    saw summary.csv new beside an old summary.md and summary.tex)."""
    tables = disk.path / "tables"
    assert main(["aggregate", str(run), "--out", str(tables)]) == 0
    old = {p.name: p.read_bytes() for p in tables.iterdir()}
    skipped = tmp_path / "skipped.csv"
    skipped.write_text("experiment,dataset,model,objective,K,estimator,seed,reason\nd,gmm2d,gmm,iwae,2,reparam,0,x\n")
    disk.fill(leave=4096)
    capsys.readouterr()
    assert main(["aggregate", str(run), "--out", str(tables), "--skipped", str(skipped)]) == 2
    _disk_full_line(capsys.readouterr().err, tables)
    assert {p.name: p.read_bytes() for p in tables.iterdir()} == old
    assert sorted(p.name for p in disk.path.iterdir()) == ["filler", "tables"]  # no temporary directory
    disk.filler.unlink()
    assert main(["aggregate", str(run), "--out", str(tables), "--skipped", str(skipped)]) == 0
    assert {p.name for p in tables.iterdir()} == {*old, "skipped.csv", "skipped.md", "skipped.html"}
