"""The ``lvmbench`` command line: one entry point that every pipeline rule calls.

    lvmbench list                      registries and each entry's declared capabilities
    lvmbench prepare DATASET           download (if needed) and verify a dataset
    lvmbench plan CONFIG [--cell ID]   the valid cells of a pipeline config and the skipped ones
    lvmbench train --cell SPEC --out RUN
    lvmbench evaluate RUN              large-K log p(x), bound curve, exact log p(x), active units
    lvmbench gradvar RUN               gradient variance / SNR at the run's snapshots
    lvmbench amortize RUN              amortization gap: per-datapoint q vs the encoder's
    lvmbench aggregate RUNS... --out DIR     tidy tables (CSV, Markdown, LaTeX)
    lvmbench plot TABLES --runs RUNS... --out DIR   seaborn figures (PNG and PDF)

A run is trained from its training spec alone; each measurement takes its own settings
(``--settings`` JSON, then single options on top; defaults from lvmbench.settings). User
errors print one line on stderr and exit with status 2, without a traceback; a name that
is not registered, or not a valid choice, gets the closest one suggested. Output piped into
a program that stops reading early (``lvmbench list | head``) ends quietly. The commands
import the package lazily, so ``lvmbench --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import textwrap
from pathlib import Path

import yaml

from lvmbench.errors import LvmbenchError
from lvmbench.registry import did_you_mean


def plain(text: str) -> str:
    """Text from a docstring without reST markup: ``x`` and :role:`~a.b.x` become x."""
    text = re.sub(r":[a-z]+:`~?(?:[^`<]*<)?([^`>]+)>?`", lambda m: m[1].rsplit(".", 1)[-1] if "~" in m[0]
                  else m[1], text)
    return text.replace("``", "")


class Parser(argparse.ArgumentParser):
    """argparse with "did you mean ...?" for a choice that is not one (a mistyped command or
    option value)."""

    def _check_value(self, action: argparse.Action, value) -> None:
        if action.choices is not None and value not in action.choices:
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}{did_you_mean(value, action.choices)} "
                                                 f"(choose from {', '.join(map(str, action.choices))})")


class _Version(argparse.Action):
    """``--version``: the version and, from a git checkout, its commit (looked up only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from lvmbench.provenance import version

        print(version())
        parser.exit()


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _json(text: str, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise LvmbenchError(f"{what} is not JSON text: {err}") from None


def _read_config(path: str) -> dict:
    """A YAML/JSON config file, or JSON text (JSON is YAML too)."""
    if path.lstrip().startswith("{"):
        return _json(path, "the config")
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


def _settings(cls, args: argparse.Namespace, overrides: dict, where: str):
    """A measurement's settings: ``--settings`` JSON, then the single options given on top."""
    from lvmbench.settings import build_settings

    base = _json(args.settings, "--settings") if args.settings else {}
    if not isinstance(base, dict):
        raise LvmbenchError(f"--settings must be a JSON mapping of {where} settings, got {base!r}")
    return build_settings(cls, {**base, **{k: v for k, v in overrides.items() if v is not None}}, where)


def _value(v) -> str:
    """A declared value as a reader wants it: a tuple as a comma list, () as none."""
    if isinstance(v, (tuple, list)):
        return ", ".join(map(str, v)) or "none"
    return str(v)


def cmd_list(args: argparse.Namespace) -> None:
    from lvmbench.data import DATASETS
    from lvmbench.estimators import ESTIMATORS
    from lvmbench.models import MODELS
    from lvmbench.objectives import OBJECTIVES

    listing = {reg.kind + "s": {e.name: {"doc": plain(e.doc), **e.capabilities(), "options": e.options(),
                                         "from": e.origin} for e in reg}
               for reg in (DATASETS, MODELS, OBJECTIVES, ESTIMATORS)}
    if args.json:
        print(json.dumps(listing, indent=2, default=str))
        return
    width = min(shutil.get_terminal_size((100, 24)).columns, 120)
    indent = " " * 19

    def block(label: str, text: str) -> str:
        return textwrap.fill(text, width, initial_indent=indent + label, subsequent_indent=indent + "  ")

    for kind, entries in listing.items():
        print(f"{kind}:")
        for name, c in entries.items():
            print(textwrap.fill(c["doc"], width, initial_indent=f"  {name:16s} ", subsequent_indent=indent))
            if c["from"] != "lvmbench":
                print(block("plugin from: ", c["from"]))
            caps = "; ".join(f"{k}: {_value(v)}" for k, v in c.items() if k not in ("doc", "options", "from"))
            print(block("declares: ", caps))
            opts = ", ".join(f"{k}={v!r}" for k, v in c["options"].items()) or "none"
            print(block("options: ", opts))


def cmd_prepare(args: argparse.Namespace) -> None:
    from lvmbench.data import load_dataset
    from lvmbench.io import save_json

    options = _json(args.options, "--options") if args.options else {}
    if not isinstance(options, dict):
        raise LvmbenchError(f"--options must be a JSON mapping of dataset options, got {options!r}")
    data = load_dataset(args.dataset, args.data_dir, **options)
    info = {"dataset": data.name, "n_train": int(data.train.shape[0]), "n_test": int(data.test.shape[0]),
            "dim": data.dim, "kind": data.kind, "binarize": data.binarize}
    if args.out:
        save_json(info, args.out)
    print(json.dumps(info))


def cmd_plan(args: argparse.Namespace) -> None:
    import pandas as pd

    from lvmbench.grid import plan
    from lvmbench.io import save_csv

    planned = plan(_read_config(args.config))
    if args.skipped:
        save_csv(pd.DataFrame(planned.skipped, columns=["experiment", "dataset", "model", "objective", "K",
                                                        "estimator", "seed", "reason"]), args.skipped)
    if args.cell is not None:
        cells = {c.id: c for c in planned.cells}
        if args.cell not in cells:
            raise LvmbenchError(f"no cell {args.cell!r} in this config{did_you_mean(args.cell, cells)}; "
                                f"'lvmbench plan CONFIG' lists them")
        m = planned.measurements[args.cell]
        print(json.dumps({"cell": cells[args.cell].to_dict(), "eval": m.eval.to_dict(),
                          "gradvar": m.gradvar.to_dict(),
                          "amortization": m.amortize.to_dict() if m.amortize is not None else None}, indent=2))
        return
    for cell in planned.cells:
        print(cell.id)
    experiments = dict.fromkeys(c.experiment for c in planned.cells)  # config order; each has a cell
    width = max(len("experiment"), *map(len, experiments))
    print(f"{'experiment':{width}s}  cells  skipped", file=sys.stderr)
    for name, cells, skipped in [*((e, sum(c.experiment == e for c in planned.cells),
                                     sum(r["experiment"] == e for r in planned.skipped)) for e in experiments),
                                 ("total", len(planned.cells), len(planned.skipped))]:
        print(f"{name:{width}s}  {cells:5d}  {skipped:7d}", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> None:
    from lvmbench.settings import Cell
    from lvmbench.train import train

    path = Path(args.cell)
    text = path.read_text() if not args.cell.lstrip().startswith(("{", "[")) and path.is_file() else args.cell
    summary = train(Cell.from_dict(_json(text, "--cell (neither a JSON file nor JSON text)")), args.out,
                    progress=not args.quiet, device=args.device, data_dir=args.data_dir)
    print(json.dumps(summary))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from lvmbench.measure.evaluation import evaluate_run
    from lvmbench.settings import EvalSettings

    s = _settings(EvalSettings, args, {"K_eval": args.K_eval, "k_grid": args.k_grid, "n_test": args.n_test,
                                       "batch_size": args.batch_size}, "eval")
    result = evaluate_run(args.run, s, device=args.device, data_dir=args.data_dir, out=args.out,
                          progress=not args.quiet)
    print(f"{result['cell']}: log p(x) ~= {result['log_px']:.3f} +- {result['log_px_se']:.3f} (L_{s.K_eval}); "
          f"bound ordering {'passed' if result['ordering_passed'] else 'FAILED'}", file=sys.stderr)


def cmd_gradvar(args: argparse.Namespace) -> None:
    from lvmbench.measure.gradvar import gradvar_run
    from lvmbench.settings import GradvarSettings

    s = _settings(GradvarSettings, args, {"draws": args.draws, "batch_size": args.batch_size,
                                          "estimators": args.estimators}, "gradvar")
    gradvar_run(args.run, s, device=args.device, data_dir=args.data_dir, out=args.out, progress=not args.quiet)


def cmd_amortize(args: argparse.Namespace) -> None:
    from lvmbench.measure.amortization import amortize_run
    from lvmbench.settings import AmortizeSettings

    s = _settings(AmortizeSettings, args, {k: getattr(args, k) for k in (
        "n_test", "steps", "lr", "K", "K_eval", "objective", "check_every", "seed")}, "amortization")
    summary = amortize_run(args.run, s, device=args.device, data_dir=args.data_dir, out=args.out,
                           progress=not args.quiet)
    print(f"{summary['cell']}: amortization gap {summary['gap']:.4f} +- {summary['gap_se']:.4f} nats "
          f"({summary['objective']}, K={summary['K']}, {summary['n_points']} points, {summary['steps']} steps)",
          file=sys.stderr)


def cmd_aggregate(args: argparse.Namespace) -> None:
    from lvmbench.report.aggregate import aggregate
    from lvmbench.report.paper import check_published

    published = None
    if args.published:
        published = _json(args.published, "--published") if args.published.lstrip().startswith("[") \
            else _read_config(args.published)
        published = published.get("published", []) if isinstance(published, dict) else published
        check_published(published)
    aggregate(args.runs, args.out, skipped=args.skipped, published=published)


def cmd_plot(args: argparse.Namespace) -> None:
    from lvmbench.report.plots import plot_all

    plot_all(args.tables, args.runs, args.out, data_dir=args.data_dir)


def _add_environment(s: argparse.ArgumentParser, device: bool = True) -> None:
    """Where a job runs and finds its data: not part of any spec or settings."""
    if device:
        s.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: $LVMBENCH_DEVICE, else auto: CUDA "
                                        "when present)")
    s.add_argument("--data-dir", help="data directory (default: $LVMBENCH_DATA or ~/.cache/lvmbench)")


def _measurement(sub, name: str, help: str, description: str, out: str, func) -> argparse.ArgumentParser:
    """A subcommand that measures a run directory: RUN, --settings, --out, --quiet, the
    device and data directory, plus its own options."""
    s = sub.add_parser(name, help=help, description=description)
    s.add_argument("run", help="run directory written by lvmbench train")
    s.add_argument("--settings", help=f"the {name} settings as a JSON mapping (see config/README.md); the options "
                                      "below override single keys")
    s.add_argument("--out", help=out)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_environment(s)
    s.set_defaults(func=func)
    return s


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="lvmbench", description=plain(__doc__.split("\n\n")[0]),
               formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=32),
               epilog="Run 'lvmbench COMMAND --help' for each command's options.")
    p.add_argument("--version", action=_Version, help="print the version (and the git commit of a checkout)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("list", help="registries and each entry's declared capabilities",
                       description="List datasets, models, objectives and estimators with their declarations "
                                   "and options.")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("prepare", help="download (if needed) and verify a dataset",
                       description="Load a dataset once: download from its mirrors if missing (unless "
                                   "LVMBENCH_OFFLINE=1), verify checksums, and print its shapes.")
    s.add_argument("dataset", help="dataset name (see lvmbench list)")
    _add_environment(s, device=False)
    s.add_argument("--options", help="dataset options as JSON text")
    s.add_argument("--out", help="write the dataset's shapes to this JSON file")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("plan", help="the cells a pipeline config runs, and the skipped combinations",
                       description="Expand a pipeline config into valid cells (printed one id per line) "
                                   "and skipped combinations with their reasons; the counts per experiment "
                                   "go to stderr.")
    s.add_argument("config", help="pipeline config: a YAML file or JSON text (see config/README.md)")
    s.add_argument("--skipped", help="write the skipped combinations and reasons to this CSV")
    s.add_argument("--cell", metavar="ID", help="print this cell's training spec and measurement settings (JSON) "
                                                "instead of the list of cells")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("train", help="train one cell",
                       description="Train one cell from its training spec (dataset x model x objective x K x "
                                   "estimator x seed, with their options and the train settings). Writes "
                                   "cell.json, checkpoint.pt, snapshots/, train.csv and train.json into --out, "
                                   "resuming from --out/checkpoint.pt when it holds the same spec.")
    s.add_argument("--cell", required=True, help="the training spec as JSON text or a JSON file "
                                                 "(see lvmbench.settings.Cell)")
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_environment(s)
    s.set_defaults(func=cmd_train)

    s = _measurement(sub, "evaluate", "large-K log p(x), bound curve, exact log p(x), active units",
                     "Estimate test log p(x) by L_K at large K (streamed, max-subtracted), the bound curve L_k for "
                     "k in the grid, exact log p(x) where tractable, ESS, active units and the bound-ordering "
                     "check. eval.json records the settings.", "output JSON (default RUN/eval.json)",
                     cmd_evaluate)
    s.add_argument("--K-eval", type=int, help="importance samples per test point (default 5000)")
    s.add_argument("--k-grid", type=_ints, help="comma-separated k values dividing K_eval for the bound curve")
    s.add_argument("--n-test", type=int, help="evaluate on the first N test points (0 = all)")
    s.add_argument("--batch-size", type=int, help="test points per pass")

    s = _measurement(sub, "gradvar", "gradient variance and SNR at the run's snapshots",
                     "At each parameter snapshot of a run and a fixed minibatch, take M independent gradient draws "
                     "per estimator; report per-group SNR, variance, and bias/MSE against the exact gradient where "
                     "one exists. gradvar.csv records the settings in columns.",
                     "output CSV (default RUN/gradvar.csv)", cmd_gradvar)
    s.add_argument("--draws", type=int, help="gradient draws M (default 100)")
    s.add_argument("--batch-size", type=int, help="minibatch size (default 32)")
    s.add_argument("--estimators", nargs="+", help="estimators to measure (default: every valid one)")

    s = _measurement(sub, "amortize", "amortization gap: per-datapoint inference vs the encoder",
                     "For each of the first N test points, optimise a separate Gaussian q (the "
                     "encoder's family: diagonal for vae, full covariance for linear_gaussian), "
                     "started at the encoder's output, on the run's bound with reparameterized "
                     "Adam steps and the model frozen. The bound before and after is estimated "
                     "from K_eval samples with common random numbers, and each point keeps its "
                     "best parameters, so after >= before on every point. The mean difference is "
                     "the amortization gap (Cremer et al. 2018). Writes a JSON summary, with its settings, "
                     "and a per-point CSV beside it.",
                     "output JSON (default RUN/amortization.json; the CSV gets the same name)", cmd_amortize)
    s.add_argument("--n-test", type=int, help="the first N test points (0 = all; default 100)")
    s.add_argument("--steps", type=int, help="Adam steps per point (default 300)")
    s.add_argument("--lr", type=float, help="Adam learning rate (default 0.01)")
    s.add_argument("--K", type=int, help="samples per step (default: the run's K)")
    s.add_argument("--K-eval", type=int, help="samples per point for the before/after bound (default: the "
                                             "smallest multiple of K >= 1000)")
    s.add_argument("--objective", choices=["elbo", "iwae"], help="bound to optimise (default: the run's, or elbo "
                                                                  "for runs trained with exact or prior_mc)")
    s.add_argument("--check-every", type=int, help="steps between best-so-far checks (default 10)")
    s.add_argument("--seed", type=int, help="seed (default 0)")

    s = sub.add_parser("aggregate", help="run directories to tidy tables",
                       description="Collect run directories into results tables: summary (CSV, Markdown, LaTeX), "
                                   "runs, bound ordering, gradient variance and skipped combinations; every "
                                   "Markdown page also as HTML, for the report.")
    s.add_argument("runs", nargs="+", help="run directories")
    s.add_argument("--out", required=True, help="tables directory")
    s.add_argument("--skipped", help="skipped-combinations CSV from lvmbench plan")
    s.add_argument("--published", help="published numbers: an experiment config (its 'published' list), or "
                                       "the list as JSON text; writes published.csv/md")
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("plot", help="figures from the tables",
                       description="Draw the benchmark figures (PNG and PDF) from the tables and run directories, "
                                   "into OUT/<experiment>/<figure type>/.")
    s.add_argument("tables", help="tables directory written by lvmbench aggregate")
    s.add_argument("--runs", nargs="+", required=True, help="run directories (for curves, samples, densities)")
    s.add_argument("--out", required=True, help="figures directory")
    _add_environment(s, device=False)
    s.set_defaults(func=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
        sys.stdout.flush()  # a reader that stopped early (| head) shows here, not at exit
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 141  # 128 + SIGPIPE, as a shell reports it
    except LvmbenchError as err:
        print(f"lvmbench {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
