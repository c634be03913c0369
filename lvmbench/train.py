"""Train one cell: dataset x model x objective x K x estimator x seed.

Adam with a learning-rate schedule, data resident on the device (no DataLoader),
dynamic binarization per minibatch for binary images, a progress bar, a CSV of the
training curve, periodic resumable checkpoints holding the resolved cell, and
parameter snapshots for gradient-variance measurement. Seeded and deterministic on
CPU; a run killed midway resumes from its last checkpoint with the same RNG state.
A non-finite loss or gradient stops the run with a message naming the cell and step.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from lvmbench.config import Cell
from lvmbench.data import Dataset, binarize, load_dataset
from lvmbench.estimators import baseline_gradients, gradients, make_estimator
from lvmbench.io import save_csv, save_json, save_torch
from lvmbench.models import LatentVariableModel, build_model
from lvmbench.models.base import fast_distributions
from lvmbench.objectives import make_objective
from lvmbench.registry import LvmbenchError, why_invalid


class NonFiniteError(LvmbenchError):
    """A loss or gradient became NaN or Inf."""


_GPU_LOCKS: list = []  # slot locks held for the life of the process


def claim_gpu(n_gpus: int, jobs_per_gpu: int, lock_dir: Path) -> int:
    """Index of a GPU with a free job slot, claimed with a non-blocking ``fcntl.flock`` on
    ``lock_dir/<gpu>.<slot>.lock`` and held until the process exits, so concurrent jobs on
    one machine spread over the GPUs and never exceed ``jobs_per_gpu`` per GPU.
    Slots are tried GPU-major by load: every GPU's slot 0 before any slot 1."""
    import fcntl

    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(jobs_per_gpu):
        for gpu in range(n_gpus):
            handle = open(lock_dir / f"{gpu}.{slot}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            _GPU_LOCKS.append(handle)
            return gpu
    print(f"[lvmbench] every GPU slot is taken ({n_gpus} GPUs x {jobs_per_gpu} jobs); sharing one",
          file=sys.stderr)
    return os.getpid() % n_gpus


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU. With several visible GPUs, ``auto`` claims a
    free slot on one of them (:func:`claim_gpu`, ``$LVMBENCH_JOBS_PER_GPU`` slots per GPU,
    default 1), so the jobs of one workstation spread over its GPUs."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        n = torch.cuda.device_count()
        if n == 1:
            return torch.device("cuda")
        jobs = int(os.environ.get("LVMBENCH_JOBS_PER_GPU", "1"))
        return torch.device(f"cuda:{claim_gpu(n, jobs, Path(tempfile.gettempdir()) / 'lvmbench-gpu')}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LvmbenchError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def total_steps(cell: Cell, n_train: int) -> int:
    t = cell.train
    if t.schedule == "burda":
        return sum(3 ** i for i in range(t.burda_stages)) * steps_per_epoch(n_train, t.batch_size)
    return t.steps


def lr_factor(cell: Cell, n_train: int, step: int) -> float:
    """Multiplier of the base learning rate at ``step``.

    burda: 10^(-i/7) during stage i, which lasts 3^i epochs (Burda et al. 2016);
    cosine: half a cosine from 1 to 0; constant: 1.
    """
    t = cell.train
    if t.schedule == "burda":
        epoch = step // steps_per_epoch(n_train, t.batch_size)
        stage = next(i for i in range(t.burda_stages + 1) if epoch < (3 ** (i + 1) - 1) // 2 or i == t.burda_stages)
        return 10 ** (-min(stage, t.burda_stages - 1) / 7)
    if t.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / total_steps(cell, n_train)))
    return 1.0


def snapshot_steps(cell: Cell, n_train: int) -> list[int]:
    total = total_steps(cell, n_train)
    n = cell.train.snapshots
    return sorted({round(total * i / (n - 1)) for i in range(n)} if n > 1 else {total})


def setup(cell: Cell, device: torch.device | None = None) -> tuple[Dataset, LatentVariableModel, torch.device]:
    """Load the cell's data and build its model on the device (the same for train,
    evaluate and gradvar). The model is initialised from the training data, seeded."""
    reason = why_invalid(cell.model_name, cell.objective_name, cell.K, cell.estimator_name, dataset=cell.dataset,
                         objective_options=cell.objective_options)
    if reason:
        raise LvmbenchError(f"cell {cell.id}: {reason}")
    device = device or pick_device(cell.device)
    data = load_dataset(cell.dataset, cell.data_dir, **cell.dataset_options)
    torch.manual_seed(cell.seed)
    model = build_model(cell.model_name, data.dim, **cell.model_options)
    model.init_from_data(data.train)
    return data, model.to(device), device


def _load_checkpoint(path: Path, cell: Cell) -> dict | None:
    """The checkpoint's state if it is readable and belongs to this cell, else None (restart)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["cell"] != cell.to_dict():
            print(f"[lvmbench] {path} belongs to another configuration; starting afresh", file=sys.stderr)
            return None
        return state
    except Exception as err:  # a truncated or corrupted file: never use it
        print(f"[lvmbench] checkpoint {path} is unreadable ({type(err).__name__}: {err}); starting afresh",
              file=sys.stderr)
        return None


def train(cell: Cell, out: str | Path, progress: bool = True) -> dict:
    """Train ``cell`` and write into ``out``: cell.json, checkpoint.pt, snapshots/step*.pt,
    train.csv and train.json (the summary). Returns the summary."""
    out = Path(out)
    data, model, device = setup(cell)
    save_json(cell.to_dict(), out / "cell.json")
    x_train = data.train.to(device)  # resident on the device for the whole run
    n = x_train.shape[0]
    objective = make_objective(cell.objective_name, **cell.objective_options)
    estimator = make_estimator(cell.estimator_name, data.dim, **cell.estimator_options)
    stateful = isinstance(estimator, torch.nn.Module)
    if stateful:
        estimator.to(device)
    theta, phi = model.decoder_parameters(), model.encoder_parameters()
    psi = list(estimator.parameters()) if stateful else []  # the estimator's own (e.g. NVIL's baseline)
    t = cell.train
    opt = torch.optim.Adam(theta + phi + psi, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cell, n, s))
    gen = torch.Generator(device=device).manual_seed(cell.seed)
    steps, snaps = total_steps(cell, n), snapshot_steps(cell, n)
    step, rows, window, elapsed = 0, [], [], 0.0  # window: bounds since the last train.csv row
    order = torch.empty(0, dtype=torch.long, device=device)  # the rest of this epoch's permutation

    state = _load_checkpoint(out / "checkpoint.pt", cell)
    if state is None:  # a fresh start: snapshots of an earlier configuration must not survive
        for stale in (out / "snapshots").glob("step*.pt"):
            stale.unlink()
    else:
        model.load_state_dict(state["model"])
        if stateful:
            estimator.load_state_dict(state["estimator"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, rows, window, elapsed = state["step"], state["rows"], state["window"], state["elapsed"]
        order = state["order"].to(device)
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)

    def checkpoint() -> None:
        save_torch({"cell": cell.to_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "estimator": estimator.state_dict() if stateful else None,
                    "scheduler": sched.state_dict(), "step": step, "rows": rows, "window": window,
                    "elapsed": elapsed,
                    "order": order.cpu(), "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                   out / "checkpoint.pt")
        save_csv(pd.DataFrame(rows, columns=["step", "epoch", "bound", "lr", "time"]), out / "train.csv")

    def snapshot() -> None:
        if step in snaps:
            save_torch({"cell": cell.to_dict(), "model": model.state_dict(), "step": step,
                        "estimator": estimator.state_dict() if stateful else None},
                       out / "snapshots" / f"step{step:08d}.pt")

    snapshot()
    started = time.perf_counter() - elapsed
    bar = tqdm(total=steps, initial=step, desc=cell.id, disable=not progress, unit="step", file=sys.stderr)
    while step < steps:
        if order.numel() < t.batch_size:  # a fresh permutation each epoch
            order = torch.randperm(n, generator=gen, device=device)
        idx, order = order[:t.batch_size], order[t.batch_size:]
        xb = x_train[idx]
        if data.binarize == "dynamic":
            xb = binarize(xb, gen)
        try:
            with fast_distributions():
                parts = estimator(model, objective, xb, cell.K)
        except (RuntimeError, ValueError) as err:  # e.g. sampling from NaN probabilities after divergence
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            diverged = not all(torch.isfinite(p).all() for p in theta + phi) or any(
                word in message.lower() for word in ("nan", "inf", "invalid"))
            if not diverged:
                raise
            raise NonFiniteError(f"cell {cell.id}: non-finite values at step {step + 1} ({message})") from None
        grads = [*sum(gradients(parts, theta, phi), []), *baseline_gradients(parts, psi)]
        bound = parts.bound.mean()
        finite = torch.stack([torch.isfinite(bound), *(torch.isfinite(g).all() for g in grads)])
        if not finite.all():  # one device sync per step
            what = "loss" if not finite[0] else "gradient"
            raise NonFiniteError(f"cell {cell.id}: non-finite {what} at step {step + 1}; nothing was written "
                                 f"for this step (the last checkpoint stays valid)")
        for p, g in zip(theta + phi + psi, grads):
            p.grad = -g  # ascend the bound
        opt.step()
        sched.step()
        step += 1
        bar.update()
        window.append(float(bound))
        if step % t.log_every == 0 or step == steps:
            mean_bound = sum(window) / len(window)
            window.clear()
            rows.append([step, step / steps_per_epoch(n, t.batch_size), mean_bound, sched.get_last_lr()[0],
                         time.perf_counter() - started])
            bar.set_postfix(bound=f"{mean_bound:.3f}")
        elapsed = time.perf_counter() - started
        if step % t.checkpoint_every == 0 and step < steps:  # the final one is written after the loop
            checkpoint()
        snapshot()
    bar.close()
    if state is None or state["step"] < steps:  # fit data-dependent parts (VQ-VAE code prior), then save once
        model.after_training(x_train)
        checkpoint()
    summary = {"cell": cell.id, "steps": step, "final_bound": rows[-1][2] if rows else math.nan,
               "wall_time": elapsed, "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    save_json(summary, out / "train.json")
    return summary


def load_trained(run: str | Path, snapshot: str | Path | None = None,
                 device: torch.device | None = None) -> tuple[Cell, Dataset, LatentVariableModel]:
    """The cell, its data and the trained model from a run directory (or one of its snapshots)."""
    run = Path(run)
    ckpt = Path(snapshot) if snapshot else run / "checkpoint.pt"
    if not ckpt.exists():
        raise LvmbenchError(f"no checkpoint at {ckpt}; train the cell first (lvmbench train)")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or corrupted
        raise LvmbenchError(f"checkpoint {ckpt} is unreadable ({type(err).__name__}); retrain the cell "
                            f"(lvmbench train restarts it cleanly)") from None
    cell = Cell.from_dict(state["cell"])
    data, model, device = setup(cell, device)
    model.load_state_dict(state["model"])
    return cell, data, model
