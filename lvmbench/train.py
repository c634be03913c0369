"""Train one cell: dataset x model x objective x K x estimator x seed.

:func:`train_step` is the training step, one unit that the trainer, the benchmarks and the
tests all call: the estimator's surrogate parts, their gradients for the decoder (theta),
the encoder (phi) and the estimator's own parameters (psi), one finiteness check, one Adam
step ascending the bound.

:func:`train` runs the steps for a cell: Adam with a learning-rate schedule, data resident
on the device (no DataLoader), dynamic binarization per minibatch for binary images, a
progress bar, a CSV of the training curve, periodic resumable checkpoints holding the
training spec, and parameter snapshots for gradient-variance measurement, all written
through :class:`lvmbench.runs.RunDir`. Seeded and deterministic on CPU; a run killed
midway resumes from its last checkpoint with the same RNG state. A non-finite loss or
gradient stops the run with a message naming the cell and step.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from lvmbench.devices import device_name
from lvmbench.errors import LvmbenchError
from lvmbench.estimators import Estimator, baseline_gradients, gradients, make_estimator
from lvmbench.models import LatentVariableModel
from lvmbench.models.base import fast_distributions
from lvmbench.objectives import Objective, make_objective
from lvmbench.runs import RunDir, holds_run, setup
from lvmbench.settings import Cell, TrainSettings


class NonFiniteError(LvmbenchError):
    """A loss or gradient became NaN or Inf."""


class NonFiniteStep(ArithmeticError):
    """Raised by :func:`train_step` before any parameter changes: ``what`` became non-finite
    ("loss", "gradient", or "values" when sampling failed on NaN parameters)."""

    def __init__(self, what: str, detail: str = ""):
        super().__init__(what, detail)
        self.what, self.detail = what, detail


class Parameters(NamedTuple):
    """The trainable groups: theta (decoder), phi (encoder), psi (the estimator's own)."""

    theta: list[Tensor]
    phi: list[Tensor]
    psi: list[Tensor]

    @classmethod
    def of(cls, model: LatentVariableModel, estimator: Estimator) -> "Parameters":
        return cls(model.decoder_parameters(), model.encoder_parameters(), list(estimator.parameters()))

    def all(self) -> list[Tensor]:
        return [*self.theta, *self.phi, *self.psi]


def make_optimizer(params: Parameters, t: TrainSettings) -> torch.optim.Adam:
    """Adam over every trainable group, with the cell's settings."""
    return torch.optim.Adam(params.all(), lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps)


def train_step(model: LatentVariableModel, estimator: Estimator, objective: Objective, x: Tensor, K: int,
               params: Parameters, optimizer: torch.optim.Optimizer) -> Tensor:
    """One optimiser step ascending the estimator's surrogates on the minibatch ``x``; returns
    the minibatch's mean bound (a 0-d tensor). One device sync checks that the loss and every
    gradient are finite; if not, :class:`NonFiniteStep` is raised and nothing changes."""
    try:
        with fast_distributions():
            parts = estimator(model, objective, x, K)
    except (RuntimeError, ValueError) as err:  # e.g. sampling from NaN probabilities after divergence
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        diverged = not all(torch.isfinite(p).all() for p in params.theta + params.phi) or any(
            word in message.lower() for word in ("nan", "inf", "invalid"))
        if not diverged:
            raise
        raise NonFiniteStep("values", message) from None
    grads = [*sum(gradients(parts, params.theta, params.phi), []), *baseline_gradients(parts, params.psi)]
    bound = parts.bound.mean()
    finite = torch.stack([torch.isfinite(bound), *(torch.isfinite(g).all() for g in grads)])
    if not finite.all():  # the one device sync of the step
        raise NonFiniteStep("loss" if not finite[0] else "gradient")
    for p, g in zip(params.all(), grads):
        p.grad = -g  # ascend the bound
    optimizer.step()
    return bound.detach()


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def total_steps(t: TrainSettings, n_train: int) -> int:
    if t.schedule == "burda":
        return sum(3 ** i for i in range(t.burda_stages)) * steps_per_epoch(n_train, t.batch_size)
    return t.steps


def lr_factor(t: TrainSettings, n_train: int, step: int) -> float:
    """Multiplier of the base learning rate at ``step``.

    burda: 10^(-i/7) during stage i, which lasts 3^i epochs (Burda et al. 2016);
    cosine: half a cosine from 1 to 0; constant: 1.
    """
    if t.schedule == "burda":
        epoch = step // steps_per_epoch(n_train, t.batch_size)
        stage = next(i for i in range(t.burda_stages + 1) if epoch < (3 ** (i + 1) - 1) // 2 or i == t.burda_stages)
        return 10 ** (-min(stage, t.burda_stages - 1) / 7)
    if t.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / total_steps(t, n_train)))
    return 1.0


def snapshot_steps(t: TrainSettings, n_train: int) -> list[int]:
    total = total_steps(t, n_train)
    n = t.snapshots
    return sorted({round(total * i / (n - 1)) for i in range(n)} if n > 1 else {total})


@holds_run("train", run="out")
def train(cell: Cell, out: str | Path, progress: bool = True, device: torch.device | str | None = None,
          data_dir: str | None = None) -> dict:
    """Train ``cell`` into the run directory ``out``: cell.json, checkpoint.pt,
    snapshots/step*.pt, train.csv and train.json (the summary). Returns the summary."""
    run = RunDir(out)
    run.check_path(cell)
    data, model, device = setup(cell, device, data_dir)
    run.write_cell(cell)
    x_train = data.train.to(device)  # resident on the device for the whole run
    n = x_train.shape[0]
    objective = make_objective(cell.objective_name, **cell.objective_options)
    estimator = make_estimator(cell.estimator_name, data.dim, **cell.estimator_options).to(device)
    params = Parameters.of(model, estimator)
    t = cell.train
    opt = make_optimizer(params, t)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(t, n, s))
    gen = torch.Generator(device=device).manual_seed(cell.seed)
    steps, snaps = total_steps(t, n), snapshot_steps(t, n)
    step, rows, window, elapsed = 0, [], [], 0.0  # window: bounds since the last train.csv row
    order = torch.empty(0, dtype=torch.long, device=device)  # the rest of this epoch's permutation

    state = run.resume_state(cell, model, estimator, snaps)
    if state is None:  # a fresh start: snapshots of an earlier configuration must not survive
        run.clear_snapshots()
    else:
        model.load_state_dict(state["model"])
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
        run.save_checkpoint({"cell": cell.to_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
                             "estimator": estimator.state_dict(), "scheduler": sched.state_dict(), "step": step,
                             "rows": rows, "window": window, "elapsed": elapsed, "order": order.cpu(),
                             "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                             "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None})
        run.write_table("train", pd.DataFrame(rows, columns=["step", "epoch", "bound", "lr", "time"]))

    def snapshot() -> None:
        if step in snaps:
            run.save_snapshot(step, {"cell": cell.to_dict(), "model": model.state_dict(), "step": step,
                                     "estimator": estimator.state_dict()})

    snapshot()
    started = time.perf_counter() - elapsed
    bar = tqdm(total=steps, initial=step, desc=cell.id, disable=not progress, unit="step", file=sys.stderr)
    while step < steps:
        if order.numel() < t.batch_size:  # a fresh permutation each epoch
            order = torch.randperm(n, generator=gen, device=device)
        idx, order = order[:t.batch_size], order[t.batch_size:]
        xb = data.observe(x_train[idx], gen)
        try:
            bound = train_step(model, estimator, objective, xb, cell.K, params, opt)
        except NonFiniteStep as err:
            if err.what == "values":
                raise NonFiniteError(f"cell {cell.id}: non-finite values at step {step + 1} ({err.detail})") from None
            raise NonFiniteError(f"cell {cell.id}: non-finite {err.what} at step {step + 1}; nothing was written "
                                 f"for this step (the last checkpoint stays valid)") from None
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
               "wall_time": elapsed, "device": str(device), "device_name": device_name(device)}
    run.write_json("train", summary)
    return summary
