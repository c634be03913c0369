"""Training: cells that differ only in their seed train together, as one batched computation.

A *bundle* of E members (cells equal but for the seed, :func:`lvmbench.grid.bundles`) is
trained by an :class:`Ensemble`: the members' parameters are stacked along a leading member
axis (``torch.func.stack_module_state``), and each step is one forward
(``torch.func.vmap`` of ``functional_call``), one backward and one Adam update for all of
them. Adam is elementwise, so the stacked parameters are E independent optimisers.

Each member is as if trained alone. Its random numbers come from its own streams, derived
from its own seed (:mod:`lvmbench.rng`), through a counter-based generator
(:mod:`lvmbench.noise`): the numbers a member draws at step t are a function of its seed
and t only, so seed s gives the same run in any bundle (bitwise on CPU), and a run
resumes exactly from any checkpoint. A member whose loss or gradient becomes NaN or Inf
is stopped there, recorded as diverged with its step, and the others go on: its gradient
and Adam momentum are masked to zero on the device, so no step needs a host sync.

:func:`train_step` is the training step, the one unit the trainer, the benchmarks and the
tests all call. :func:`train_bundle` trains a bundle into its members' run directories
(each gets cell.json, checkpoint.pt, snapshots/, train.csv and train.json, written by
:class:`lvmbench.runs.RunDir`), resuming each member from its own checkpoint.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from lvmbench import noise
from lvmbench.data import Dataset, load_dataset
from lvmbench.devices import device_name, pick_device
from lvmbench.errors import LvmbenchError
from lvmbench.estimators import Estimator, make_estimator
from lvmbench.models import LatentVariableModel
from lvmbench.models.base import fast_distributions
from lvmbench.objectives import Objective, make_objective
from lvmbench.progress import Progress
from lvmbench.rng import forked_rng, stream_seed
from lvmbench.runs import RunDir, build, watch_parent
from lvmbench.settings import Cell, TrainSettings

CURVE_COLUMNS = ["step", "epoch", "bound", "lr", "time"]
#: torch.compile's mode per device type: CUDA graphs on a GPU, where an uncaptured step is
#: bound by kernel-launch latency and shapes are static within a bundle
COMPILE_MODES = {"cuda": "reduce-overhead", "cpu": None}
#: the fewest steps for which ``compile: auto`` compiles, per device type. Measured on this
#: project's 2-core CPU (docs/performance.md): compiling Burda's VAE step costs about a
#: minute and saves about 15% of each step, so it repays itself only after about 40 minutes
#: of training; on a GPU, where CUDA graphs remove the launch latency, after a few thousand
#: steps (an estimate: no GPU was available when this was written).
COMPILE_AFTER_STEPS = {"cpu": 50_000, "cuda": 2_000}
#: the layout of checkpoint.pt (its format number and keys); another layout is not resumed
CHECKPOINT_FORMAT = 2
CHECKPOINT_KEYS = ("cell", "model", "estimator", "optimizer", "step", "rows", "window", "elapsed", "status",
                   "diverged_at")


@contextmanager
def flushed_denormals() -> Iterator[None]:
    """Flush denormal floats to zero on the CPU for the block. IWAE's importance weights make
    gradients of 1e-40 and below, which run the matrix products 5x slower on x86 (measured:
    a 2-layer VAE step at K=50, 250 ms against 50 ms); flushed, they change nothing above 1e-38."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


class Member(nn.Module):
    """What one member trains: the model (theta, phi) and the estimator's own state (psi).
    ``forward(x)`` returns the estimator's surrogate parts as tensors (a zero baseline when
    the estimator has none)."""

    def __init__(self, model: LatentVariableModel, estimator: Estimator, objective: Objective, K: int):
        super().__init__()
        self.model, self.estimator = model, estimator
        self.objective, self.K = objective, K
        self.shared = False  # whether the decoder and encoder surrogates are one tensor (set on each call)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        parts = self.estimator(self.model, self.objective, x, self.K)
        self.shared = parts.decoder is parts.encoder
        baseline = parts.baseline if parts.baseline is not None else parts.decoder.new_zeros(())
        return parts.decoder, parts.encoder, parts.bound, baseline


def _group(name: str) -> str:
    """theta (decoder), phi (encoder) or psi (the estimator's own) for a parameter of a Member."""
    if name.startswith("estimator."):
        return "psi"
    return "phi" if name.startswith("model.encoder_net.") else "theta"


class Ensemble:
    """E members with stacked parameters, trained by one batched step (module docstring).

    ``keys`` is the (E,) int64 noise key of each member's sampling stream. ``alive`` and
    ``diverged_at`` (the step whose loss or gradient first became non-finite, else -1) live
    on the device.
    """

    def __init__(self, members: list[Member], train: TrainSettings, keys: Tensor, device: torch.device,
                 compiled: bool = False):
        self.template = members[0]
        self.E, self.settings, self.device = len(members), train, device
        params, self.buffers = stack_module_state([m.to(device) for m in members])
        self.names = [n for n, p in params.items() if p.requires_grad]
        self.params = params
        self.groups = {g: [n for n in self.names if _group(n) == g] for g in ("theta", "phi", "psi")}
        t = train
        self.optimizer = torch.optim.Adam([params[n] for n in self.names], lr=t.lr,
                                          betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps)
        self.keys = keys.to(device)
        self.alive = torch.ones(self.E, dtype=torch.bool, device=device)
        self.diverged_at = torch.full((self.E,), -1, dtype=torch.int64, device=device)
        self.compiled = compiled
        self._forward = torch.compile(self._batched, dynamic=False, mode=COMPILE_MODES[device.type]) if compiled \
            else self._batched

    def _batched(self, params: dict, buffers: dict, x: Tensor, keys: Tensor, step: Tensor):
        """Every member's surrogate parts at once: vmap of :meth:`_member` over the member axis."""
        return vmap(self._member, in_dims=(0, 0, 0, 0, None), randomness="error")(params, buffers, x, keys, step)

    @classmethod
    def of(cls, models: list[LatentVariableModel], estimators: list[Estimator], objective: Objective, K: int,
           train: TrainSettings, seeds: list[int], device: torch.device | str = "cpu",
           compiled: bool = False) -> "Ensemble":
        """An ensemble of the given models and estimators, each sampling from its seed's stream."""
        keys = torch.stack([noise.key_of(stream_seed(seed, "sampling")) for seed in seeds])
        return cls([Member(m, e, objective, K) for m, e in zip(models, estimators)], train, keys, torch.device(device),
                   compiled)

    def write_back(self, m: int, model: LatentVariableModel) -> LatentVariableModel:
        """Load member ``m``'s current parameters into ``model`` (on its device); returns it."""
        device = next(model.parameters()).device
        model.load_state_dict({k: v.to(device) for k, v in self.member_state(m)[0].items()})
        return model

    def _member(self, params: dict, buffers: dict, x: Tensor, key: Tensor, step: Tensor):
        with noise.using(noise.Noise(key, step)):
            return functional_call(self.template, (params, buffers), (x,))

    def _view(self, mask: Tensor, like: Tensor) -> Tensor:
        return mask.view(-1, *[1] * (like.dim() - 1))

    def member_state(self, m: int) -> tuple[dict, dict]:
        """(model state_dict, estimator state_dict) of member ``m``, on the CPU."""
        state = {n: t[m].detach().cpu().clone() for n, t in {**self.params, **self.buffers}.items()}
        return ({n.removeprefix("model."): v for n, v in state.items() if n.startswith("model.")},
                {n.removeprefix("estimator."): v for n, v in state.items() if n.startswith("estimator.")})

    def optimizer_state(self, m: int) -> dict:
        """Member ``m``'s Adam moments by parameter name, and the shared step count."""
        state = {}
        for n in self.names:
            s = self.optimizer.state.get(self.params[n])
            if s:
                state[n] = {"exp_avg": s["exp_avg"][m].cpu().clone(), "exp_avg_sq": s["exp_avg_sq"][m].cpu().clone(),
                            "step": float(s["step"])}
        return state

    def load_optimizer_state(self, states: list[dict]) -> None:
        """Restack the members' Adam states (all taken at the same step)."""
        for n in self.names:
            if states and n in states[0]:
                p = self.params[n]
                self.optimizer.state[p] = {
                    "step": torch.tensor(states[0][n]["step"]),
                    "exp_avg": torch.stack([s[n]["exp_avg"] for s in states]).to(p.device),
                    "exp_avg_sq": torch.stack([s[n]["exp_avg_sq"] for s in states]).to(p.device)}


def train_step(ensemble: Ensemble, x: Tensor, step: int, lr: float) -> Tensor:
    """One training step of every member on its minibatch ``x`` (E, B, D), at ``step`` (the
    counter of the members' noise) with learning rate ``lr``: one batched forward, one
    backward per parameter group, one Adam update. A member whose bound or any gradient is
    not finite is marked diverged at this step and frozen (its gradient and momentum are
    zero from now on); nothing synchronises with the host. Returns the bounds (E,), zero for
    members that are not alive."""
    ens = ensemble
    t = torch.tensor(step, dtype=torch.int64, device=ens.device)
    with fast_distributions():
        decoder, encoder, bound, baseline = ens._forward(ens.params, ens.buffers, x, ens.keys, t)
    p = {g: [ens.params[n] for n in names] for g, names in ens.groups.items()}
    # the gradients of the negated surrogates: Adam descends them, so the members ascend the bound
    if ens.template.shared:  # decoder and encoder ascend one surrogate: one backward pass
        grads = list(torch.autograd.grad(-decoder.sum(), p["theta"] + p["phi"], allow_unused=True,
                                         retain_graph=bool(p["psi"])))
    else:
        grads = [*torch.autograd.grad(-decoder.sum(), p["theta"], allow_unused=True, retain_graph=True),
                 *torch.autograd.grad(-encoder.sum(), p["phi"], allow_unused=True, retain_graph=bool(p["psi"]))]
    if p["psi"]:
        grads += torch.autograd.grad(-baseline.sum(), p["psi"], allow_unused=True)
    params = p["theta"] + p["phi"] + p["psi"]
    grads = [torch.zeros_like(q) if g is None else g for q, g in zip(params, grads)]
    # one pass per gradient: a NaN or Inf entry makes its member's sum non-finite (so do
    # entries so large that their sum passes float32's 3.4e38: a divergence too)
    sums = torch.stack([bound.sum(-1), *(g.reshape(ens.E, -1).sum(1) for g in grads)])  # (1 + n_params, E)
    finite = torch.isfinite(sums).all(0)
    ens.diverged_at = torch.where(ens.alive & ~finite, t + 1, ens.diverged_at)  # the failing step, counted from 1
    ens.alive = ens.alive & finite
    for q, g in zip(params, grads):
        q.grad = torch.where(ens._view(ens.alive, g), g, 0.0)  # frozen members get 0
        state = ens.optimizer.state.get(q)
        if state:
            state["exp_avg"].mul_(ens._view(ens.alive, q))
    for group in ens.optimizer.param_groups:
        group["lr"] = lr
    ens.optimizer.step()
    return torch.where(ens.alive, bound.mean(-1), 0.0)


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


class Minibatches:
    """Each member's minibatch at each step, from its own data-order and binarization streams:
    a fresh permutation of the training set each epoch (the last partial batch dropped), and
    for dynamically binarized data a fresh Bernoulli sample of every minibatch."""

    def __init__(self, data: Dataset, x_train: Tensor, seeds: list[int], batch_size: int, device: torch.device):
        self.data, self.x, self.B = data, x_train, batch_size
        self.spe = steps_per_epoch(x_train.shape[0], batch_size)
        self.order_keys, self.bin_keys = (torch.stack([noise.key_of(stream_seed(s, purpose)) for s in seeds]).to(device)
                                          for purpose in ("data_order", "binarization"))
        self.epoch, self.perm = -1, None

    def __call__(self, step: int) -> Tensor:
        epoch, j = divmod(step, self.spe)
        if epoch != self.epoch:
            u = noise.Noise(self.order_keys, epoch).uniform((self.x.shape[0],), torch.float64, self.x.device)
            self.epoch, self.perm = epoch, u.argsort(-1)  # (E, N)
        xb = self.x[self.perm[:, j * self.B:(j + 1) * self.B]]  # (E, B, D)
        if self.data.binarize == "dynamic":
            u = noise.Noise(self.bin_keys, step).uniform(xb.shape[1:], xb.dtype, xb.device)
            xb = (u < xb).to(xb.dtype)
        return xb


def build_member(cell: Cell, data: Dataset) -> tuple[LatentVariableModel, Estimator]:
    """A member's model (:func:`lvmbench.runs.build`) and estimator, each initialised from its
    own stream of the cell's seed (the estimator's from ``estimator_init``: NVIL's baseline)."""
    model = build(cell, data)
    with forked_rng(torch.device("cpu"), stream_seed(cell.seed, "estimator_init")):
        estimator = make_estimator(cell.estimator_name, data.dim, **cell.estimator_options)
    return model, estimator


def _check_bundle(cells: list[Cell], outs: list[Path]) -> None:
    if not cells or len(cells) != len(outs):
        raise LvmbenchError("a bundle needs one run directory per cell")
    shared = [{k: v for k, v in c.to_dict().items() if k != "seed"} for c in cells]
    if any(s != shared[0] for s in shared):
        raise LvmbenchError(f"the cells of a bundle must differ only in their seed: {cells[0].id} and others")
    if len({c.seed for c in cells}) != len(cells):
        raise LvmbenchError("a bundle holds each seed once")


def compile_choice(setting: bool | str | None, device: torch.device, steps: int) -> bool:
    """Whether to compile the step: ``True``/``False``, or for ``"auto"`` (also None: then
    ``$LVMBENCH_COMPILE``, else auto) when the cell trains at least
    :data:`COMPILE_AFTER_STEPS` steps on this kind of device. The choice depends only on the
    device and the planned length, so a cell trains the same way when it is resumed."""
    if setting is None:
        setting = {"true": True, "false": False}.get(os.environ.get("LVMBENCH_COMPILE", "auto"), "auto")
    if setting == "auto":
        return steps >= COMPILE_AFTER_STEPS.get(device.type, COMPILE_AFTER_STEPS["cuda"])
    return bool(setting)


def train_bundle(cells: list[Cell], outs: list[str | Path], progress: bool = True,
                 device: torch.device | str | None = None, data_dir: str | None = None,
                 compile: bool | str | None = None) -> list[dict]:
    """Train the cells of a bundle (equal but for the seed) together, each into its run
    directory; returns their summaries (train.json). A member already trained is left as it
    is; members resume from their own checkpoints, and members at different steps train in
    groups of equal step, one group after the other. ``compile``: see :func:`compile_choice`."""
    runs = [RunDir(o) for o in outs]
    _check_bundle(cells, [r.path for r in runs])
    for cell, run in zip(cells, runs):
        run.check_path(cell)
    watch_parent()
    with ExitStack() as held:  # every member's directory, locked for the trainer
        for run in runs:
            held.enter_context(run.lock("train"))
        return _train_bundle(cells, runs, progress, device, data_dir, compile)


def _train_bundle(cells: list[Cell], runs: list[RunDir], progress: bool, device: torch.device | str | None,
                  data_dir: str | None, compile: bool | str | None) -> list[dict]:
    device = device if isinstance(device, torch.device) else pick_device(device)
    first = cells[0]
    data = load_dataset(first.dataset, data_dir, **first.dataset_options)
    t = first.train
    n = data.train.shape[0]
    if t.batch_size > n:
        raise LvmbenchError(f"cell {first.id}: train.batch_size={t.batch_size} exceeds the {n} training points")
    x_train = data.train.to(device)  # resident on the device for the whole run
    states = []
    for cell, run in zip(cells, runs):
        model, estimator = build_member(cell, data)  # refuses a cell that cannot run, before anything is written
        state = run.resume_state(cell, (CHECKPOINT_FORMAT, CHECKPOINT_KEYS), model, estimator, snapshot_steps(t, n))
        if state is None:
            run.clear_snapshots()
        run.write_cell(cell)
        states.append(state)
    summaries: dict[int, dict] = {}
    todo = []
    for i, (cell, run, state) in enumerate(zip(cells, runs, states)):
        if state is not None and state.get("status", "training") != "training" and run.read_json("train"):
            summaries[i] = run.read_json("train")  # already trained: nothing to do
        else:
            todo.append(i)
    by_step: dict[int, list[int]] = {}
    for i in todo:
        by_step.setdefault(states[i]["step"] if states[i] else 0, []).append(i)
    compiled = compile_choice(compile, device, total_steps(t, n))
    with flushed_denormals():
        for step, group in sorted(by_step.items()):
            done = _train_group([cells[i] for i in group], [runs[i] for i in group], [states[i] for i in group],
                                data, x_train, device, progress, compiled)
            summaries.update(zip(group, done))
    return [summaries[i] for i in range(len(cells))]


def train(cell: Cell, out: str | Path, progress: bool = True, device: torch.device | str | None = None,
          data_dir: str | None = None, compile: bool | str | None = None) -> dict:
    """Train one cell into the run directory ``out``: a bundle of one (:func:`train_bundle`)."""
    return train_bundle([cell], [out], progress=progress, device=device, data_dir=data_dir, compile=compile)[0]


def _train_group(cells: list[Cell], runs: list[RunDir], states: list[dict | None], data: Dataset, x_train: Tensor,
                 device: torch.device, progress: bool, compiled: bool) -> list[dict]:
    """Train members that are all at the same step (fresh, or resumed from their checkpoints)."""
    first, E = cells[0], len(cells)
    t, n = first.train, x_train.shape[0]
    objective = make_objective(first.objective_name, **first.objective_options)
    members: list[Member] = []
    for cell, state in zip(cells, states):
        model, estimator = build_member(cell, data)
        if state is not None:
            model.load_state_dict(state["model"])
            estimator.load_state_dict(state["estimator"])
        members.append(Member(model, estimator, objective, cell.K))
    ens = Ensemble.of([m.model for m in members], [m.estimator for m in members], objective, first.K, t,
                      [c.seed for c in cells], device, compiled)
    batches = Minibatches(data, x_train, [c.seed for c in cells], t.batch_size, device)
    steps, snaps = total_steps(t, n), snapshot_steps(t, n)
    step, elapsed = (states[0]["step"], states[0]["elapsed"]) if states[0] else (0, 0.0)
    rows = [list(s["rows"]) if s else [] for s in states]
    window = torch.tensor([s["window"][0] if s else 0.0 for s in states], dtype=torch.float64, device=device)
    n_window = states[0]["window"][1] if states[0] else 0
    if states[0]:
        ens.load_optimizer_state([s["optimizer"] for s in states])
        ens.diverged_at = torch.tensor([s["diverged_at"] for s in states], device=device)
        ens.alive = ens.diverged_at < 0

    def member_checkpoint(m: int, status: str, model_state: dict | None = None) -> dict:
        own_model_state, estimator_state = ens.member_state(m)
        return {"format": CHECKPOINT_FORMAT, "cell": cells[m].to_dict(), "model": model_state or own_model_state,
                "estimator": estimator_state,
                "optimizer": ens.optimizer_state(m), "step": step, "rows": rows[m],
                "window": [float(window[m]), n_window], "elapsed": elapsed, "status": status,
                "diverged_at": int(ens.diverged_at[m])}

    def checkpoint() -> None:
        for m, run in enumerate(runs):
            run.save_checkpoint(member_checkpoint(m, "training"))
            run.write_table("train", pd.DataFrame(rows[m], columns=CURVE_COLUMNS))

    def snapshot() -> None:
        if step in snaps:
            for m, run in enumerate(runs):
                model_state, estimator_state = ens.member_state(m)
                run.save_snapshot(step, {"cell": cells[m].to_dict(), "model": model_state, "step": step,
                                         "estimator": estimator_state})

    snapshot()
    started = time.perf_counter() - elapsed
    label = first.id if E == 1 else f"{first.id.rsplit('/', 1)[0]}/seeds {','.join(str(c.seed) for c in cells)}"
    bar = Progress(steps, f"train {label}", initial=step, enabled=progress)
    while step < steps:
        lr = t.lr * lr_factor(t, n, step)
        bound = train_step(ens, batches(step), step, lr)
        window += bound
        n_window += 1
        step += 1
        if step % t.log_every == 0 or step == steps:
            means = (window / n_window).tolist()  # the host sync of a logging step
            alive = ens.alive.tolist()
            now = time.perf_counter() - started
            for m in range(E):
                if alive[m]:
                    rows[m].append([step, step / steps_per_epoch(n, t.batch_size), means[m], lr, now])
            window.zero_()
            n_window = 0
            bar.update(0, bound=sum(x for x, a in zip(means, alive) if a) / max(1, sum(alive)))
            if not any(alive):
                break
        bar.update()
        elapsed = time.perf_counter() - started
        if step % t.checkpoint_every == 0 and step < steps:  # the final one is written after the loop
            checkpoint()
        snapshot()
    bar.close()
    summaries = []
    diverged_at = ens.diverged_at.tolist()
    for m, (cell, run) in enumerate(zip(cells, runs)):
        model_state = None
        if diverged_at[m] > 0:
            print(f"[lvmbench] cell {cell.id}: diverged at step {diverged_at[m]} (non-finite loss or gradient); "
                  f"the other members go on; its parameters are those after step {diverged_at[m] - 1}",
                  file=sys.stderr)
        else:
            model = build(cell, data)
            model.load_state_dict(ens.member_state(m)[0])
            model.to(device).after_training(x_train)  # data-dependent parts fitted once (VQ-VAE's code prior)
            model_state = {k: v.cpu() for k, v in model.state_dict().items()}
        status = "diverged" if diverged_at[m] > 0 else "finished"
        run.save_checkpoint(member_checkpoint(m, status, model_state))
        run.write_table("train", pd.DataFrame(rows[m], columns=CURVE_COLUMNS))
        summary = {"cell": cell.id, "status": status, "steps": step if status == "finished" else diverged_at[m] - 1,
                   "diverged_at": diverged_at[m] if status == "diverged" else None,
                   "final_bound": rows[m][-1][2] if rows[m] else None, "wall_time": elapsed,
                   "device": str(device), "device_name": device_name(device), "bundle": [c.seed for c in cells],
                   "compiled": compiled}
        run.write_json("train", summary)
        summaries.append(summary)
    return summaries
