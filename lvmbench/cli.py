"""The ``lvmbench`` command line: one entry point that every pipeline rule calls.

    lvmbench list                      registries and each entry's declared capabilities
    lvmbench prepare DATASET           download (if needed) and verify a dataset
    lvmbench plan CONFIG               the valid cells of a pipeline config and the skipped ones
    lvmbench train --cell CELL --out RUN
    lvmbench evaluate RUN              large-K log p(x), bound curve, exact log p(x), active units
    lvmbench gradvar RUN               gradient variance / SNR at the run's snapshots
    lvmbench amortize RUN              amortization gap: per-datapoint q vs the encoder's
    lvmbench aggregate RUNS... --out DIR     tidy tables (CSV, Markdown, LaTeX)
    lvmbench plot TABLES --runs RUNS... --out DIR   seaborn figures (PNG and PDF)

User errors print one line on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from lvmbench.registry import LvmbenchError


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _read_config(path: str) -> dict:
    """A YAML/JSON config file, or JSON text (JSON is YAML too)."""
    if path.lstrip().startswith("{"):
        return json.loads(path)
    p = Path(path)
    if not p.exists():
        raise LvmbenchError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise LvmbenchError(f"config file {p} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise LvmbenchError(f"config file {p} is empty or not a mapping")
    return data


def cmd_list(args: argparse.Namespace) -> None:
    from lvmbench.data import DATASETS
    from lvmbench.estimators import ESTIMATORS
    from lvmbench.models import MODELS
    from lvmbench.objectives import OBJECTIVES

    def caps(c: dict) -> str:
        return ", ".join(f"{k}={getattr(v, '__name__', v)}" for k, v in c.items() if k != "doc")

    listing = {
        "datasets": {n: {"kind": s.kind, "binarize": s.binarize, "dim": s.dim, "offline": s.offline, "doc": s.doc}
                     for n, s in DATASETS.items()},
        **{kind: {e.name: {**{k: getattr(v, "__name__", v) for k, v in e.caps.items()}, "doc": e.doc} for e in reg}
           for kind, reg in (("models", MODELS), ("objectives", OBJECTIVES), ("estimators", ESTIMATORS))},
    }
    if args.json:
        print(json.dumps(listing, indent=2, default=str))
        return
    for kind, entries in listing.items():
        print(f"{kind}:")
        for name, c in entries.items():
            print(f"  {name:16s} {c['doc']}\n  {'':16s} [{caps(c)}]")


def cmd_prepare(args: argparse.Namespace) -> None:
    from lvmbench.data import load_dataset
    from lvmbench.io import save_json

    try:
        options = json.loads(args.options) if args.options else {}
    except json.JSONDecodeError as err:
        raise LvmbenchError(f"--options is not JSON text: {err}") from None
    data = load_dataset(args.dataset, args.data_dir, **options)
    info = {"dataset": data.name, "n_train": int(data.train.shape[0]), "n_test": int(data.test.shape[0]),
            "dim": data.dim, "kind": data.kind, "binarize": data.binarize}
    if args.out:
        save_json(info, args.out)
    print(json.dumps(info))


def cmd_plan(args: argparse.Namespace) -> None:
    import pandas as pd

    from lvmbench.config import plan
    from lvmbench.io import save_csv

    cells, skipped = plan(_read_config(args.config))
    if args.skipped:
        save_csv(pd.DataFrame(skipped, columns=["experiment", "dataset", "model", "objective", "K", "estimator",
                                                "seed", "reason"]), args.skipped)
    for cell in cells:
        print(cell.id)
    print(f"{len(cells)} cells, {len(skipped)} skipped combinations", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> None:
    from lvmbench.config import Cell
    from lvmbench.train import train

    text = args.cell if args.cell.lstrip().startswith("{") or not Path(args.cell).is_file() else Path(args.cell).read_text()
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise LvmbenchError(f"--cell is neither a JSON file nor JSON text: {err}") from None
    if args.device:
        spec["device"] = args.device
    summary = train(Cell.from_dict(spec), args.out, progress=not args.quiet)
    print(json.dumps(summary))


def cmd_evaluate(args: argparse.Namespace) -> None:

    from lvmbench.config import EvalSettings, build_settings
    from lvmbench.evaluation import active_units, estimate_bounds, summarize
    from lvmbench.io import save_json
    from lvmbench.train import load_trained, pick_device

    cell, data, model = load_trained(args.run, device=pick_device(args.device) if args.device else None)
    overrides = {k: v for k, v in {"K_eval": args.K_eval, "k_grid": args.k_grid and tuple(args.k_grid),
                                   "n_test": args.n_test, "batch_size": args.batch_size}.items() if v is not None}
    s = build_settings(EvalSettings, {**vars(cell.eval), **overrides}, "eval")
    device = next(model.parameters()).device
    x_test = data.test[: s.n_test or None].to(device)
    est = estimate_bounds(model, x_test, s.K_eval, list(s.k_grid), s.batch_size, s.max_samples,
                          binarize_data=data.binarize == "dynamic", seed=s.seed, progress=not args.quiet)
    result = {"cell": cell.id, **summarize(est, s.ordering_threshold),
              "active_units": active_units(model, data.train[: s.active_units_n].to(device), seed=s.seed),
              "device": str(device)}
    save_json(result, args.out or Path(args.run) / "eval.json")
    print(f"{cell.id}: log p(x) ~= {result['log_px']:.3f} +- {result['log_px_se']:.3f} (L_{s.K_eval}); "
          f"bound ordering {'passed' if result['ordering_passed'] else 'FAILED'}", file=sys.stderr)


def cmd_gradvar(args: argparse.Namespace) -> None:
    import pandas as pd
    import torch

    from lvmbench.data import binarize
    from lvmbench.estimators import ESTIMATORS
    from lvmbench.gradvar import gradient_variance
    from lvmbench.io import save_csv
    from lvmbench.objectives import make_objective
    from lvmbench.registry import why_invalid
    from lvmbench.train import load_trained

    snapshots = sorted((Path(args.run) / "snapshots").glob("step*.pt"))
    if not snapshots:
        raise LvmbenchError(f"no snapshots in {Path(args.run) / 'snapshots'}; train the cell first")
    frames = []
    for snap in snapshots:
        cell, data, model = load_trained(args.run, snap)
        s = cell.gradvar
        names = args.estimators or list(s.estimators) or [
            e.name for e in ESTIMATORS
            if why_invalid(cell.model_name, cell.objective_name, cell.K, e.name,
                           objective_options=cell.objective_options) is None]
        device = next(model.parameters()).device
        x = data.train[: args.batch_size or s.batch_size].to(device)
        if data.binarize == "dynamic":
            x = binarize(x, torch.Generator(device=device).manual_seed(s.seed))
        objective = make_objective(cell.objective_name, **cell.objective_options)
        trained_state = torch.load(snap, map_location="cpu", weights_only=False).get("estimator")
        df = gradient_variance(model, objective, cell.model_name, x, cell.K, names, args.draws or s.draws,
                               seed=s.seed, progress=not args.quiet,
                               estimator_states={cell.estimator_name: trained_state})
        step = int(snap.stem.removeprefix("step"))
        frames.append(df.assign(step=step, cell=cell.id, experiment=cell.experiment, dataset=cell.dataset,
                                model=cell.model, trained_objective=cell.objective,
                                trained_estimator=cell.estimator, seed=cell.seed))
    save_csv(pd.concat(frames, ignore_index=True), args.out or Path(args.run) / "gradvar.csv")


def cmd_amortize(args: argparse.Namespace) -> None:
    from lvmbench.amortization import amortize_run
    from lvmbench.train import pick_device

    summary = amortize_run(args.run, n_test=args.n_test, steps=args.steps, lr=args.lr, K=args.K, K_eval=args.K_eval,
                           objective=args.objective, check_every=args.check_every, seed=args.seed,
                           device=pick_device(args.device) if args.device else None, out=args.out,
                           progress=not args.quiet)
    print(f"{summary['cell']}: amortization gap {summary['gap']:.4f} +- {summary['gap_se']:.4f} nats "
          f"({summary['objective']}, K={summary['K']}, {summary['n_points']} points, {summary['steps']} steps)",
          file=sys.stderr)


def cmd_aggregate(args: argparse.Namespace) -> None:
    from lvmbench.aggregate import aggregate

    published = None
    if args.published:
        from lvmbench.paper import check_published

        published = _read_config(args.published) if not args.published.lstrip().startswith("[") \
            else json.loads(args.published)
        published = published.get("published", []) if isinstance(published, dict) else published
        check_published(published)
    aggregate(args.runs, args.out, skipped=args.skipped, published=published)


def cmd_plot(args: argparse.Namespace) -> None:
    from lvmbench.plots import plot_all

    plot_all(args.tables, args.runs, args.out)


def _run_command(sub, name: str, help: str, description: str, out: str, func) -> argparse.ArgumentParser:
    """A subcommand that reads a run directory: RUN, --out and --quiet, plus its own options."""
    s = sub.add_parser(name, help=help, description=description)
    s.add_argument("run", help="run directory written by lvmbench train")
    s.add_argument("--out", help=out)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=func)
    return s


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lvmbench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run 'lvmbench COMMAND --help' for each command's options.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("list", help="registries and each entry's declared capabilities",
                       description="List datasets, models, objectives and estimators with their declarations.")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("prepare", help="download (if needed) and verify a dataset",
                       description="Load a dataset once: download from its mirrors if missing (unless "
                                   "LVMBENCH_OFFLINE=1), verify checksums, and print its shapes.")
    s.add_argument("dataset", help="dataset name (see lvmbench list)")
    s.add_argument("--data-dir", help="data directory (default: $LVMBENCH_DATA or ~/.cache/lvmbench)")
    s.add_argument("--options", help="dataset options as JSON text")
    s.add_argument("--out", help="write the dataset's shapes to this JSON file")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("plan", help="the cells a pipeline config runs, and the skipped combinations",
                       description="Expand a pipeline config into valid cells (printed one id per line) "
                                   "and skipped combinations with their reasons.")
    s.add_argument("config", help="pipeline config: a YAML file or JSON text (see config/README.md)")
    s.add_argument("--skipped", help="write the skipped combinations and reasons to this CSV")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("train", help="train one cell",
                       description="Train one cell (dataset x model x objective x K x estimator x seed). Writes "
                                   "cell.json, checkpoint.pt, snapshots/, train.csv and train.json into --out, "
                                   "resuming from --out/checkpoint.pt when it is valid.")
    s.add_argument("--cell", required=True, help="the cell as JSON text or a JSON file (see lvmbench.config.Cell)")
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: the cell's, usually auto)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_train)

    s = _run_command(sub, "evaluate", "large-K log p(x), bound curve, exact log p(x), active units",
                     "Estimate test log p(x) by L_K at large K (streamed, max-subtracted), the bound curve L_k for "
                     "k in the grid, exact log p(x) where tractable, ESS, active units and the bound-ordering "
                     "check. Settings default to the cell's eval block.", "output JSON (default RUN/eval.json)",
                     cmd_evaluate)
    s.add_argument("--K-eval", type=int, help="importance samples per test point (default 5000)")
    s.add_argument("--k-grid", type=_ints, help="comma-separated k values dividing K_eval for the bound curve")
    s.add_argument("--n-test", type=int, help="evaluate on the first N test points (0 = all)")
    s.add_argument("--batch-size", type=int, help="test points per pass")
    s.add_argument("--device", help="cpu, cuda, cuda:N or auto")

    s = _run_command(sub, "gradvar", "gradient variance and SNR at the run's snapshots",
                     "At each parameter snapshot of a run and a fixed minibatch, take M independent gradient draws "
                     "per estimator; report per-group SNR, variance, and bias/MSE against the exact gradient where "
                     "one exists.", "output CSV (default RUN/gradvar.csv)", cmd_gradvar)
    s.add_argument("--draws", type=int, help="gradient draws M (default: the cell's gradvar.draws)")
    s.add_argument("--batch-size", type=int, help="minibatch size (default: the cell's gradvar.batch_size)")
    s.add_argument("--estimators", nargs="+", help="estimators to measure (default: every valid one)")

    s = _run_command(sub, "amortize", "amortization gap: per-datapoint inference vs the encoder",
                     "For each of the first N test points, optimise a separate Gaussian q (the "
                     "encoder's family: diagonal for vae, full covariance for linear_gaussian), "
                     "started at the encoder's output, on the run's bound with reparameterized "
                     "Adam steps and the model frozen. The bound before and after is estimated "
                     "from K_eval samples with common random numbers, and each point keeps its "
                     "best parameters, so after >= before on every point. The mean difference is "
                     "the amortization gap (Cremer et al. 2018). Writes a JSON summary and a "
                     "per-point CSV beside it.",
                     "output JSON (default RUN/amortization.json; the CSV gets the same name)", cmd_amortize)
    s.add_argument("--n-test", type=int, default=100, help="the first N test points (0 = all; default 100)")
    s.add_argument("--steps", type=int, default=300, help="Adam steps per point (default 300)")
    s.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 0.01)")
    s.add_argument("--K", type=int, help="samples per step (default: the run's K)")
    s.add_argument("--K-eval", type=int, help="samples per point for the before/after bound (default: the "
                                             "smallest multiple of K >= 1000)")
    s.add_argument("--objective", choices=["elbo", "iwae"], help="bound to optimise (default: the run's, or elbo "
                                                                  "for runs trained with exact or prior_mc)")
    s.add_argument("--check-every", type=int, default=10, help="steps between best-so-far checks (default 10)")
    s.add_argument("--seed", type=int, help="seed (default: the cell's eval seed)")
    s.add_argument("--device", help="cpu, cuda, cuda:N or auto")

    s = sub.add_parser("aggregate", help="run directories to tidy tables",
                       description="Collect run directories into results tables: summary (CSV, Markdown, LaTeX), "
                                   "bound ordering, gradient variance and skipped combinations.")
    s.add_argument("runs", nargs="+", help="run directories")
    s.add_argument("--out", required=True, help="tables directory")
    s.add_argument("--skipped", help="skipped-combinations CSV from lvmbench plan")
    s.add_argument("--published", help="published numbers: an experiment config (its 'published' list), or "
                                       "the list as JSON text; writes published.csv/md")
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("plot", help="figures from the tables",
                       description="Draw the benchmark figures (PNG and PDF) from the tables and run directories.")
    s.add_argument("tables", help="tables directory written by lvmbench aggregate")
    s.add_argument("--runs", nargs="+", required=True, help="run directories (for curves, samples, densities)")
    s.add_argument("--out", required=True, help="figures directory")
    s.set_defaults(func=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except LvmbenchError as err:
        print(f"lvmbench {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
