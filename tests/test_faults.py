"""Faults a cluster inflicts on a training job, at the level of the runner (lvmbench train):
SIGKILL midway, truncated or corrupted checkpoints, and a NaN mid-training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lvmbench.cli import main
from lvmbench.runs import load_trained
from lvmbench.settings import Cell
from lvmbench.train import train

CELL = {"experiment": "f", "dataset": "gmm2d", "model": "gmm", "objective": "iwae", "K": 4, "estimator": "score",
        "seed": 3, "dataset_options": {"n_train": 400, "n_test": 100},
        "train": {"steps": 400, "batch_size": 20, "lr": 0.01, "log_every": 7, "checkpoint_every": 25,
                  "snapshots": 3}}


def _final_state(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=False)


def _assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical parameters, optimiser state and training curve (times aside)."""
    sa, sb = _final_state(a), _final_state(b)
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert [r[:4] for r in sa["rows"]] == [r[:4] for r in sb["rows"]]
    ja, jb = json.loads((a / "train.json").read_text()), json.loads((b / "train.json").read_text())
    assert ja["final_bound"] == jb["final_bound"] and ja["steps"] == jb["steps"]


@pytest.mark.slow
def test_sigkill_midway_resumes_to_identical_metrics(tmp_path):
    """A job killed with SIGKILL after a checkpoint resumes from it and ends, on CPU, with
    exactly the metrics of an uninterrupted run with the same seed (RNG states, the epoch's
    permutation, Adam's moments and the partial logging window are all checkpointed)."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    train(Cell.from_dict(CELL), reference, progress=False)
    cmd = [sys.executable, "-m", "lvmbench", "train", "--quiet", "--cell", json.dumps(CELL), "--out", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "train.csv").exists():  # written with the first checkpoint (step 25)
        if proc.poll() is not None or time.time() > deadline:
            pytest.fail("the training process ended before it could be killed")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "train.json").exists()  # the run did not finish
    assert 25 <= _final_state(killed)["step"] < 400
    assert main(["train", "--quiet", "--cell", json.dumps(CELL), "--out", str(killed)]) == 0
    _assert_same_run(reference, killed)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_checkpoint_restarts_cleanly(tmp_path, damage, capsys):
    """A truncated or corrupted checkpoint is detected and the run restarts from scratch,
    ending exactly like a fresh run, instead of crashing or using bad weights."""
    cell = {**CELL, "train": {**CELL["train"], "steps": 60}}
    fresh, damaged = tmp_path / "fresh", tmp_path / "damaged"
    train(Cell.from_dict(cell), fresh, progress=False)
    train(Cell.from_dict({**cell, "train": {**cell["train"], "steps": 30}}), damaged, progress=False)
    ckpt = damaged / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[damage])
    (damaged / "train.json").unlink()
    train(Cell.from_dict(cell), damaged, progress=False)
    assert "unreadable" in capsys.readouterr().err
    _assert_same_run(fresh, damaged)


def test_checkpoint_of_another_config_is_not_reused(tmp_path, capsys):
    run = tmp_path / "run"
    train(Cell.from_dict({**CELL, "train": {**CELL["train"], "steps": 30}}), run, progress=False)
    other = {**CELL, "seed": 4, "train": {**CELL["train"], "steps": 30}}
    train(Cell.from_dict(other), run, progress=False)
    assert "belongs to another configuration" in capsys.readouterr().err
    assert _final_state(run)["cell"]["seed"] == 4


def test_unreadable_checkpoint_is_a_clear_error_for_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    train(Cell.from_dict({**CELL, "train": {**CELL["train"], "steps": 10}}), run, progress=False)
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unreadable" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_nan_mid_training_is_recorded_as_divergence(tmp_path, monkeypatch, capsys):
    """A NaN appearing at step 13 stops the run there: one line names the cell and the step,
    train.json records "diverged" at step 13, the checkpoint holds the finite parameters
    of step 12, the command succeeds (a divergence is a result, not a crash), and evaluate
    writes that the run diverged instead of numbers."""
    import lvmbench.train as train_module
    from lvmbench.estimators import Estimator

    real = train_module.make_estimator

    class Poisoned(Estimator):
        """The real estimator, with every part NaN at the 13th call."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, model, objective, x, K):
            self.calls += 1
            parts = self.inner(model, objective, x, K)
            if self.calls == 13:
                return parts._replace(decoder=parts.decoder * float("nan"), encoder=parts.encoder * float("nan"),
                                      bound=parts.bound * float("nan"))
            return parts

    monkeypatch.setattr(train_module, "make_estimator", lambda *args, **kwargs: Poisoned(real(*args, **kwargs)))
    cell = {**CELL, "train": {**CELL["train"], "checkpoint_every": 5}}
    assert main(["train", "--quiet", "--cell", json.dumps(cell), "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "cell f/gmm2d/gmm/iwae/K4/score/seed3: diverged at step 13" in err and "Traceback" not in err
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert (summary["status"], summary["diverged_at"], summary["steps"]) == ("diverged", 13, 12)
    state = _final_state(tmp_path / "run")
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert main(["evaluate", str(tmp_path / "run"), "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["status"] == "diverged at step 13"
    assert load_trained(tmp_path / "run").cell.id == "f/gmm2d/gmm/iwae/K4/score/seed3"


def test_nan_in_discrete_sampling_is_recorded_as_divergence(tmp_path, capsys):
    """A mixture model trained with lr=1e30 gets NaN mixing weights after one step; the next
    step's categorical samples and bound are NaN, and the run is recorded as diverged there."""
    cell = {"experiment": "f", "dataset": "gmm2d", "model": "gmm", "objective": "iwae", "K": 2,
            "estimator": "score", "seed": 0, "dataset_options": {"n_train": 64, "n_test": 16},
            "train": {"steps": 5, "batch_size": 16, "lr": 1.0e30}}
    code = main(["train", "--quiet", "--cell", json.dumps(cell), "--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0 and "cell f/gmm2d/gmm/iwae/K2/score/seed0: diverged at step 2" in err and "Traceback" not in err
    assert json.loads((tmp_path / "run" / "train.json").read_text())["status"] == "diverged"


def test_evaluation_out_of_memory_retries_with_smaller_chunks(monkeypatch, capsys, float64):
    """A chunk that raises CUDA's out-of-memory error is retried with fewer samples per
    chunk until it fits. With q equal to the exact posterior every log-weight equals
    log p(x), so the retried estimate must still equal log p(x) to rounding."""
    import lvmbench.measure.evaluation as evaluation
    from lvmbench.models import build_model

    torch.manual_seed(0)
    model = build_model("linear_gaussian", 3, decoder="linear", q_scale=None)
    model.set_encoder_to_posterior()
    x = torch.randn(8, 3)
    real, sizes = evaluation.log_weights, []

    def small_memory(m, xb, K, **kw):
        sizes.append(K)
        if K > 10:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(m, xb, K, **kw)

    monkeypatch.setattr(evaluation, "log_weights", small_memory)
    est = evaluation.estimate_bounds(model, x, 100, [1, 10], batch_size=4, max_samples=400, progress=False)
    assert max(sizes) > 10 and sizes[-1] <= 10
    assert "retrying with chunks of 10 samples" in capsys.readouterr().err
    assert abs(est.bounds - est.log_px[:, None]).max() < 1e-9

    monkeypatch.setattr(evaluation, "log_weights", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError()))
    with pytest.raises(evaluation.LvmbenchError, match="out of memory even with one sample per chunk"):
        evaluation.estimate_bounds(model, x, 100, [1, 10], batch_size=4, max_samples=400, progress=False)



@pytest.mark.slow
def test_gpu_slots_spread_jobs_and_never_double_book(tmp_path, capsys):
    """Concurrent jobs on a 2-GPU workstation with 2 jobs per GPU claim distinct locks: the
    first two spread over both GPUs, the next two take the second slots, and a slot freed
    when its process exits is claimed again by the next job."""
    from lvmbench.devices import claim_gpu

    script = ("import sys, time; from pathlib import Path; from lvmbench.devices import claim_gpu; "
              "print(claim_gpu(2, 2, Path(sys.argv[1])), flush=True); time.sleep(60)")

    def start():
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        return proc, int(proc.stdout.readline())  # returns once the lock is held

    jobs = [start() for _ in range(4)]
    try:
        assert [gpu for _, gpu in jobs] == [0, 1, 0, 1]
        assert sorted(p.name for p in tmp_path.glob("*.lock")) == ["0.0.lock", "0.1.lock", "1.0.lock", "1.1.lock"]
        jobs[1][0].kill()
        jobs[1][0].wait()
        jobs[1] = start()
        assert jobs[1][1] == 1  # the freed slot on GPU 1
        assert claim_gpu(2, 2, tmp_path) in (0, 1)  # all four slots busy: shares one, with a note
        assert "every GPU slot is taken" in capsys.readouterr().err
    finally:
        for proc, _ in jobs:
            proc.kill()


# ---------------------------------------------------------------------------------------
# locked run directories
# ---------------------------------------------------------------------------------------
def _holding(run: Path, command: str) -> subprocess.Popen:
    """A process holding ``run``'s lock for ``command`` until it is killed."""
    script = ("import sys, time; from lvmbench.runs import RunDir\n"
              "with RunDir(sys.argv[1]).lock(sys.argv[2]):\n    print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(run), command], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _refused(argv: list[str], capsys, *words: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is in use by" in err, err
    assert all(w in err for w in words), err
    return err


@pytest.mark.slow
def test_a_second_trainer_stops_naming_the_one_training(tmp_path, capsys):
    """Two trainers of one run directory (a rerun after `snakemake --unlock`, or two working
    directories sharing one results path): the second stops at once, naming the first's pid,
    host and command; so does a measurement. The lock goes with the process that held it."""
    import fcntl
    import socket

    run = tmp_path / "run"
    cell = {**CELL, "train": {**CELL["train"], "steps": 10 ** 7, "checkpoint_every": 10 ** 6}}
    first = subprocess.Popen([sys.executable, "-m", "lvmbench", "train", "--quiet", "--cell", json.dumps(cell),
                              "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run / ".lock").exists() or not (run / ".lock").read_text():
            assert first.poll() is None and time.time() < deadline, "the first trainer did not start"
            time.sleep(0.05)
        err = _refused(["train", "--quiet", "--cell", json.dumps(cell), "--out", str(run)], capsys,
                       f"pid {first.pid} on {socket.gethostname()} (lvmbench train {run}")
        assert "wait for it to finish or stop it" in err
        _refused(["evaluate", str(run), "--quiet"], capsys, f"pid {first.pid}")
    finally:
        first.kill()
        first.wait()
    with open(run / ".lock") as handle:  # released by the kernel with the process
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.mark.parametrize("argv", [["evaluate"], ["gradvar"], ["amortize"]], ids=lambda a: a[0])
def test_a_measurement_of_a_run_a_trainer_has_just_taken_names_the_trainer(tmp_path, capsys, argv):
    """A trainer holds the directory before it writes cell.json: a measurement started in
    that window says the run is in use (the CI found this race), not that it is no run."""
    run = tmp_path / "run"
    holder = _holding(run, "train")
    try:
        assert not (run / "cell.json").exists()
        _refused([*argv, str(run), "--quiet"], capsys, f"pid {holder.pid}", "(lvmbench train")
    finally:
        holder.kill()
        holder.wait()
    assert main(["evaluate", str(run), "--quiet"]) == 2
    assert "no cell.json" in capsys.readouterr().err


@pytest.mark.slow
def test_measurements_share_a_run_but_not_with_a_trainer_or_themselves(tmp_path, capsys):
    """evaluate and gradvar run side by side on one run; a second evaluate, or a trainer,
    stops naming the evaluation that holds it."""
    run = tmp_path / "run"
    cell = {**CELL, "train": {**CELL["train"], "steps": 10}}
    train(Cell.from_dict(cell), run, progress=False)
    holder = _holding(run, "evaluate")
    try:
        _refused(["evaluate", str(run), "--quiet", "--K-eval", "4", "--k-grid", "1,4"], capsys, f"pid {holder.pid}")
        assert main(["gradvar", str(run), "--quiet", "--draws", "2", "--batch-size", "4"]) == 0
        _refused(["train", "--quiet", "--cell", json.dumps(cell), "--out", str(run)], capsys, f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert main(["evaluate", str(run), "--quiet", "--K-eval", "4", "--k-grid", "1,4"]) == 0
