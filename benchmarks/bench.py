"""Throughput of lvmbench's hot paths, side by side with a plain PyTorch baseline in one process.

Measures, on each available device (CPU, and CUDA when present):

* training steps/s for Burda et al.'s 1-layer VAE (784-200-200-50) with IWAE, K=50,
  batch 20 (the protocol) and batch 100 (the peers' measurement in shared notes),
  lvmbench's training step (:func:`lvmbench.train.train_step`: estimator -> surrogate parts
  -> gradients -> finiteness check -> Adam) against a
  hand-written baseline (one loss, loss.backward(), Adam);
* samples x K per second of the batched log-weight computation;
* evaluation test-points/s of L_5000 (lvmbench.measure.evaluation.estimate_bounds) against a
  simple chunked baseline;
* the projected wall time of the full burda2016 MNIST protocol (3280 epochs of
  59,600 images at batch 20, then L_5000 on 10,000 test points) on this device.

Speed is reported as ratios against the baseline measured in the same run; absolute
times only mean something on the device they were taken on.

    python benchmarks/bench.py [--device cpu|cuda|all] [--seconds 5] [--out results/bench.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from lvmbench.estimators import make_estimator
from lvmbench.measure.evaluation import estimate_bounds
from lvmbench.models import build_model, log_weights
from lvmbench.models.base import fast_distributions
from lvmbench.objectives import make_objective
from lvmbench.settings import TrainSettings
from lvmbench.train import Ensemble, train_step

BURDA_STEPS = 3280 * (59_600 // 20)
BURDA_TEST = 10_000


def rates(fns: dict, seconds: float, device: torch.device, rounds: int = 5) -> dict[str, float]:
    """Calls per second of each function, measured in alternating rounds (A B A B ...)
    after a warm-up, so load from other processes hits every contender alike; the median
    over rounds is reported."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in fns.values():
        for _ in range(2):
            fn()
    per_round = {name: [] for name in fns}
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


class PlainIWAE(nn.Module):
    """The code a researcher would write by hand: Burda's 1-layer IWAE in one module."""

    def __init__(self, x_dim: int = 784, h: int = 200, z: int = 50):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(x_dim, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 2 * z))
        self.dec = nn.Sequential(nn.Linear(z, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, x_dim))

    def log_w(self, x: torch.Tensor, K: int) -> torch.Tensor:
        mu, log_std = self.enc(x).chunk(2, -1)
        eps = torch.randn(K, *mu.shape, device=x.device)
        z = mu + log_std.exp() * eps
        log_q = (-0.5 * eps ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_pz = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_px = -nn.functional.binary_cross_entropy_with_logits(self.dec(z), x.expand(K, *x.shape),
                                                                 reduction="none").sum(-1)
        return log_pz + log_px - log_q  # (K, B)


def bench_device(device: torch.device, seconds: float) -> dict:
    torch.manual_seed(0)
    x_all = torch.bernoulli(torch.full((1000, 784), 0.13, device=device))
    out = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
           else platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    objective = make_objective("iwae")
    estimator = make_estimator("reparam")

    for batch in (20, 100):
        x = x_all[:batch]
        model = build_model("vae", 784)
        ensemble = Ensemble.of([model], [estimator], objective, 50, TrainSettings(lr=1e-3, adam_eps=1e-4), [0],
                               device)

        def lvmbench_step():  # the trainer's own step
            train_step(ensemble, x[None], 0, 1e-3)

        plain = PlainIWAE().to(device)
        plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3, eps=1e-4)

        def plain_step():
            plain_opt.zero_grad()
            loss = -(torch.logsumexp(plain.log_w(x, 50), 0) - math.log(50)).mean()
            loss.backward()
            plain_opt.step()

        r = rates({"ours": lvmbench_step, "base": plain_step}, seconds, device)
        out[f"train_steps_per_s_batch{batch}"] = r["ours"]
        out[f"train_baseline_steps_per_s_batch{batch}"] = r["base"]
        out[f"train_speed_ratio_batch{batch}"] = r["ours"] / r["base"]

    model = build_model("vae", 784).to(device).eval()
    K, B = 5000, 100 if device.type == "cpu" else 1000
    chunk = max(1, 200_000 // B)
    x = x_all[:B]
    with torch.no_grad(), fast_distributions():
        out["samples_x_K_per_s"] = rates({"lw": lambda: log_weights(model, x, chunk)}, seconds, device)["lw"] * chunk * B

    n_eval = 20 if device.type == "cpu" else 1000
    x = x_all[:n_eval]

    def ours_eval():
        estimate_bounds(model, x, K, [K], batch_size=min(n_eval, B), progress=False)

    def plain_eval():  # simple chunked code: collect all log-weights, then one logsumexp
        with torch.no_grad(), fast_distributions():
            for start in range(0, n_eval, B):
                xb = x[start:start + B]
                lw = torch.cat([log_weights(model, xb, chunk).log_w for _ in range(K // chunk)])
                (lw.logsumexp(0) - math.log(K)).cpu()

    r = rates({"ours": ours_eval, "base": plain_eval}, seconds, device)
    out["eval_points_per_s"], out["eval_baseline_points_per_s"] = r["ours"] * n_eval, r["base"] * n_eval
    out["eval_speed_ratio"] = r["ours"] / r["base"]
    hours = (BURDA_STEPS / out["train_steps_per_s_batch20"] + BURDA_TEST / out["eval_points_per_s"]) / 3600
    out["projected_burda2016_mnist_hours"] = hours
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    p.add_argument("--seconds", type=float, default=5.0, help="timing window per measurement")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False  # full fp32, as in evaluation
        devices.append(torch.device("cuda"))
    results = [bench_device(d, args.seconds) for d in devices]
    for r in results:
        print(json.dumps(r, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
