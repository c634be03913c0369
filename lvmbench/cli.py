"""The ``lvmbench`` command line: one entry point that every pipeline rule calls.

    lvmbench list                      registries and each entry's declared capabilities
    lvmbench prepare DATASET           download (if needed) and verify a dataset
    lvmbench plan CONFIG [--cell ID]   the valid cells of a pipeline config and the skipped ones
    lvmbench train --cell SPEC --out RUN
    lvmbench evaluate RUN              large-K log p(x), bound curve, exact log p(x), active units, AIS, BDMC
    lvmbench gradvar RUN               gradient variance / SNR at the run's snapshots or its exact optimum
    lvmbench amortize RUN              amortization gap: per-datapoint q vs the encoder's
    lvmbench aggregate RUNS... --out DIR     tidy tables (CSV, Markdown, LaTeX)
    lvmbench plot TABLES --runs RUNS... --out DIR   seaborn figures (PNG and PDF)

A run is trained from its training spec alone; each measurement takes its own settings
(``--settings`` JSON, then single options on top; defaults from lvmbench.settings). Every
input is checked before any work starts: the settings and the sizes they take from the
data (lvmbench.grid.check_settings, as for a config), and each output path (an ``--out``
that names a directory where a file is wanted, or the reverse, is refused at once).

A user error, a full disk or an unreadable file prints one line on stderr and exits with
status 2, without a traceback; a name that is not registered, or not a valid choice, gets
the closest one suggested. An unexpected internal error prints one line naming a log file
that holds the traceback, and exits with status 1. Output piped into a program that stops
reading early (``lvmbench list | head``) ends quietly. The commands import the package
lazily, so ``lvmbench --help`` answers at once.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import json
import os
import re
import shutil
import sys
import tempfile
import textwrap
import traceback
from pathlib import Path

from lvmbench.configfile import parse_json, read_config, read_config_or_json, read_text
from lvmbench.errors import LvmbenchError
from lvmbench.settings import DEVICE, check_finite
from lvmbench.registry import did_you_mean


def plain(text: str) -> str:
    """Text from a docstring without reST markup: ``x`` and :role:`~a.b.x` become x."""
    text = re.sub(r":[a-z]+:`~?(?:[^`<]*<)?([^`>]+)>?`", lambda m: m[1].rsplit(".", 1)[-1] if "~" in m[0]
                  else m[1], text)
    return text.replace("``", "")


class Parser(argparse.ArgumentParser):
    """argparse with "did you mean ...?" for a choice that is not one (a mistyped command or
    option value), and a usage error on one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

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


def _device(text: str) -> str:
    if not re.fullmatch(DEVICE, text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def _data_dir(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the data directory must not be empty")
    return text


def _mapping(text: str, what: str) -> dict:
    value = parse_json(text, what)
    if not isinstance(value, dict):
        raise LvmbenchError(f"{what} must be a JSON mapping, got {value!r}")
    return value


def _settings(cls, args: argparse.Namespace, overrides: dict, where: str):
    """A measurement's settings: ``--settings`` JSON, then the single options given on top,
    checked against the run's cell (sizes it takes from the data, tensor sizes)."""
    from lvmbench.grid import check_settings
    from lvmbench.runs import RunDir
    from lvmbench.settings import build_settings

    base = _mapping(args.settings, f"--settings (the {where} settings)") if args.settings else {}
    settings = build_settings(cls, {**base, **{k: v for k, v in overrides.items() if v is not None}}, where)
    check_settings(RunDir(args.run).read_cell(), settings, where)
    return settings


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
    from lvmbench.data.remote import rechecked
    from lvmbench.io import check_output, save_json

    options = _mapping(args.options, "--options (the dataset options)") if args.options else {}
    check_finite(options, "--options")
    if args.out:
        check_output(args.out, "--out")
    with rechecked():  # the content itself, not the size and mtime of the verification cache
        data = load_dataset(args.dataset, args.data_dir, **options)
    info = {"dataset": data.name, "n_train": int(data.train.shape[0]), "n_test": int(data.test.shape[0]),
            "dim": data.dim, "kind": data.kind, "binarize": data.binarize}
    if args.out:
        save_json(info, args.out)
    print(json.dumps(info))


def cmd_plan(args: argparse.Namespace) -> None:
    import pandas as pd

    from lvmbench.grid import plan
    from lvmbench.io import check_output, save_csv

    if args.skipped:
        check_output(args.skipped, "--skipped")
    planned = plan(read_config_or_json(args.config))
    for warning in planned.warnings:
        print(f"lvmbench plan: warning: {warning}", file=sys.stderr)
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
    from lvmbench.grid import check_settings
    from lvmbench.io import check_output
    from lvmbench.runs import RunDir
    from lvmbench.settings import Cell
    from lvmbench.train import train_bundle

    is_text = args.cell.lstrip().startswith(("{", "["))
    text = args.cell if is_text or not Path(args.cell).exists() else read_text(args.cell, "--cell file")
    spec = parse_json(text, "--cell (neither a JSON file nor JSON text)")
    if not isinstance(spec, dict):
        raise LvmbenchError(f"--cell must be a JSON mapping (a training spec), got {type(spec).__name__}")
    outs = [Path(o).parent if Path(o).name == "train.json" else Path(o) for o in args.out]
    if len(outs) == 1 and ("seed" in spec or RunDir(outs[0]).path_id() is None):
        cells = [Cell.from_dict(spec)]
    else:  # a bundle: each run directory spells its cell, whose seed it gives
        ids = [RunDir(o).path_id() for o in outs]
        if None in ids:
            raise LvmbenchError(f"{outs[ids.index(None)]}: the run directories of a bundle must be laid out as "
                                "runs/<experiment>/<dataset>/<model>/<objective>/K<K>/<estimator>/seed<seed>")
        cells = [Cell.from_dict({**spec, "seed": int(i.rsplit("/seed", 1)[1])}) for i in ids]
    for cell, out in zip(cells, outs):
        check_settings(cell, cell.train, "train")
        check_output(out, "--out", directory=True)
    compile = {"true": True, "false": False}.get(args.compile, args.compile)
    for summary in train_bundle(cells, outs, progress=not args.quiet, device=args.device, data_dir=args.data_dir,
                                compile=compile):
        print(json.dumps(summary))


def _ais_settings(args: argparse.Namespace):
    """The AIS settings of ``lvmbench evaluate``: ``--ais`` JSON (null: no AIS), then the single
    AIS options on top (any of them turns AIS on)."""
    from lvmbench.settings import AISSettings, build_settings

    base = parse_json(args.ais, "--ais") if args.ais else None
    if base is not None and not isinstance(base, dict):
        raise LvmbenchError(f"--ais must be a JSON mapping of AIS settings or null, got {base!r}")
    overrides = {k: v for k, v in {"temperatures": args.ais_temperatures, "chains": args.ais_chains,
                                   "n_test": args.ais_n_test, "bdmc_points": args.bdmc_points}.items()
                 if v is not None}
    if base is None and not overrides:
        return None
    return build_settings(AISSettings, {**(base or {}), **overrides}, "ais")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from lvmbench.io import check_output
    from lvmbench.measure.evaluation import evaluate_run
    from lvmbench.settings import EvalSettings

    s = _settings(EvalSettings, args, {"K_eval": args.K_eval, "k_grid": args.k_grid, "n_test": args.n_test,
                                       "batch_size": args.batch_size}, "eval")
    if args.out:
        check_output(args.out, "--out")
    result = evaluate_run(args.run, s, device=args.device, data_dir=args.data_dir, out=args.out,
                          progress=not args.quiet, ais=_ais_settings(args))
    if "status" in result:
        print(f"{result['cell']}: not evaluated, {result['status']}", file=sys.stderr)
        return
    extra = ""
    if "ais" in result:
        a = result["ais"]
        extra += f"; AIS {a['log_px']:.3f} +- {a['log_px_se']:.3f} on {a['n_points']} points"
    if "bdmc" in result:
        b = result["bdmc"]
        extra += f"; BDMC sandwich [{b['lower']:.3f}, {b['upper']:.3f}], width {b['width']:.3f} +- {b['width_se']:.3f}"
    print(f"{result['cell']}: log p(x) ~= {result['log_px']:.3f} +- {result['log_px_se']:.3f} (L_{s.K_eval}){extra}; "
          f"bound ordering {'passed' if result['ordering_passed'] else 'FAILED'}", file=sys.stderr)


def cmd_gradvar(args: argparse.Namespace) -> None:
    from lvmbench.io import check_output
    from lvmbench.measure.gradvar import gradvar_run
    from lvmbench.settings import GradvarSettings

    s = _settings(GradvarSettings, args, {"draws": args.draws, "batch_size": args.batch_size,
                                          "estimators": args.estimators, "at": args.at, "noise": args.noise},
                  "gradvar")
    if args.out:
        check_output(args.out, "--out")
    gradvar_run(args.run, s, device=args.device, data_dir=args.data_dir, out=args.out, progress=not args.quiet)


def cmd_amortize(args: argparse.Namespace) -> None:
    from lvmbench.io import check_output
    from lvmbench.measure.amortization import amortize_run
    from lvmbench.settings import AmortizeSettings

    s = _settings(AmortizeSettings, args, {k: getattr(args, k) for k in (
        "n_test", "steps", "lr", "K", "K_eval", "objective", "check_every", "seed")}, "amortization")
    if args.out:
        for path in (Path(args.out), Path(args.out).with_suffix(".csv")):
            check_output(path, "--out")
    summary = amortize_run(args.run, s, device=args.device, data_dir=args.data_dir, out=args.out,
                           progress=not args.quiet)
    if "status" in summary:
        print(f"{summary['cell']}: not amortized, {summary['status']}", file=sys.stderr)
        return
    print(f"{summary['cell']}: amortization gap {summary['gap']:.4f} +- {summary['gap_se']:.4f} nats "
          f"({summary['objective']}, K={summary['K']}, {summary['n_points']} points, {summary['steps']} steps)",
          file=sys.stderr)


def _config_list(text: str | None, key: str) -> list | None:
    """``--published`` / ``--claims``: JSON text of a list, or an experiment config whose
    ``key`` list it is; None when not given."""
    if not text:
        return None
    value = parse_json(text, f"--{key}") if text.lstrip().startswith("[") else read_config(text)
    value = value.get(key, []) if isinstance(value, dict) else value
    check_finite(value, f"--{key}")
    return value


def cmd_aggregate(args: argparse.Namespace) -> None:
    from lvmbench.io import check_output
    from lvmbench.report.aggregate import aggregate
    from lvmbench.report.claims import check_claims
    from lvmbench.report.paper import check_published

    published, claims = _config_list(args.published, "published"), _config_list(args.claims, "claims")
    if published is not None:
        check_published(published)
    if claims is not None:
        check_claims(claims)
    check_output(args.out, "--out", directory=True)
    aggregate(args.runs, args.out, skipped=args.skipped, published=published, claims=claims)


def cmd_plot(args: argparse.Namespace) -> None:
    from lvmbench.io import check_output
    from lvmbench.report.plots import plot_all

    check_output(args.out, "--out", directory=True)
    plot_all(args.tables, args.runs, args.out, data_dir=args.data_dir)


def _add_environment(s: argparse.ArgumentParser, device: bool = True) -> None:
    """Where a job runs and finds its data: not part of any spec or settings."""
    if device:
        s.add_argument("--device", type=_device, help="cpu, cuda, cuda:N or auto (default: $LVMBENCH_DEVICE, else "
                                                      "auto: CUDA when present)")
    s.add_argument("--data-dir", type=_data_dir, help="data directory (default: $LVMBENCH_DATA or ~/.cache/lvmbench)")


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
                                   "estimator x seed, with their options and the train settings), or a bundle of "
                                   "cells equal but for the seed as one batched computation. Writes cell.json, "
                                   "checkpoint.pt, snapshots/, train.csv and train.json into each run directory, "
                                   "resuming each from its checkpoint when it holds the same spec. A member whose "
                                   "loss or gradient becomes non-finite is stopped and recorded as diverged.")
    s.add_argument("--cell", required=True, help="the training spec as JSON text or a JSON file "
                                                 "(see lvmbench.settings.Cell); for a bundle, without its seed")
    s.add_argument("--out", required=True, nargs="+",
                   help="run directory (or its train.json); several make a bundle, each laid out as "
                        "runs/<cell id>, whose seed it gives")
    s.add_argument("--compile", choices=["auto", "true", "false"],
                   help="torch.compile the training step (default: $LVMBENCH_COMPILE, else auto: only for runs "
                        "long enough to repay the compile time)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_environment(s)
    s.set_defaults(func=cmd_train)

    s = _measurement(sub, "evaluate", "large-K log p(x), bound curve, exact log p(x), active units",
                     "Estimate test log p(x) by L_K at large K (streamed, max-subtracted), the bound curve L_k for "
                     "k in the grid, exact log p(x) where tractable, ESS, active units, with --ais annealed "
                     "importance sampling (HMC) and the BDMC sandwich on simulated data, and the bound-ordering "
                     "check. eval.json records the settings.", "output JSON (default RUN/eval.json)",
                     cmd_evaluate)
    s.add_argument("--K-eval", type=int, help="importance samples per test point (default 5000)")
    s.add_argument("--k-grid", type=_ints, help="comma-separated k values dividing K_eval for the bound curve")
    s.add_argument("--n-test", type=int, help="evaluate on the first N test points (0 = all)")
    s.add_argument("--batch-size", type=int, help="test points per pass")
    s.add_argument("--ais", help="AIS settings as a JSON mapping (see config/README.md, `ais`), or null for none: "
                                 "annealed importance sampling of log p(x) on the first test points")
    s.add_argument("--ais-temperatures", type=int, help="AIS intermediate distributions T (turns AIS on)")
    s.add_argument("--ais-chains", type=int, help="AIS chains per point (turns AIS on)")
    s.add_argument("--ais-n-test", type=int, help="AIS on the first N evaluated test points (0 = all; turns AIS on)")
    s.add_argument("--bdmc-points", type=int, help="BDMC sandwich on N points simulated from the model "
                                                   "(turns AIS on)")

    s = _measurement(sub, "gradvar", "gradient variance and SNR at the run's snapshots",
                     "At each parameter snapshot of a run (or at the exact optimum plus Gaussian noise, --at "
                     "optimum) and a fixed random minibatch, take M independent draws of the batch-sum gradient "
                     "per estimator; report per-group SNR (mean and median over components) with its Monte Carlo "
                     "floor sqrt(2/(pi M)) and the fraction of components at it, variance, and bias/MSE against "
                     "the exact gradient where one exists. gradvar.csv records the settings in columns.",
                     "output CSV (default RUN/gradvar.csv)", cmd_gradvar)
    s.add_argument("--draws", type=int, help="gradient draws M (default 100)")
    s.add_argument("--batch-size", type=int, help="minibatch size (default 32)")
    s.add_argument("--estimators", nargs="+", help="estimators to measure (default: every valid one)")
    s.add_argument("--at", choices=["snapshots", "optimum"], help="measure at every training snapshot (default) or "
                                                                  "at the model's exact optimum plus noise")
    s.add_argument("--noise", type=float, help="with --at optimum: std of the Gaussian noise on every parameter "
                                               "(default 0.01)")

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
                                       "the list as JSON text; writes published.csv/md/html")
    s.add_argument("--claims", help="paper claims to check: an experiment config (its 'claims' list), or the "
                                    "list as JSON text; writes claims.csv/md/html")
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


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _crash_log(command: str, err: BaseException) -> str:
    """Write ``err``'s traceback to a new log file and return where it is (or why not)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{command}-{os.getpid()}.log"
    text = f"lvmbench {command} (argv {sys.argv})\n" + "".join(traceback.format_exception(err))
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    for directory in (cache / "lvmbench" / "errors", Path(tempfile.gettempdir())):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(text)
            return f"the traceback is in {directory / name}"
        except OSError:
            continue
    return "the traceback could not be written anywhere"


def _environment_error(err: BaseException) -> str | None:
    """One line for the failures a job meets from its environment rather than from a bug:
    a full disk or a file it cannot reach (OSError), or memory running out; else None."""
    import torch

    from lvmbench.io import output_error

    if isinstance(err, OSError) and err.errno is not None:
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):  # only ever met writing
            return str(output_error(err.filename or "a file", err))
        return _one_line(f"{err.filename}: {err.strerror}" if err.filename else err.strerror or str(err))
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)) or (
            isinstance(err, RuntimeError) and "can't allocate memory" in str(err)):
        return (f"out of memory ({_one_line(str(err))[:200] or type(err).__name__}); lower K, the batch sizes or "
                f"max_samples, or use a device with more memory")
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure ends in one line on stderr (module docstring)."""
    args = parser().parse_args(argv)
    try:
        args.func(args)
        sys.stdout.flush()  # a reader that stopped early (| head) shows here, not at exit
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 141  # 128 + SIGPIPE, as a shell reports it
    except LvmbenchError as err:
        print(f"lvmbench {args.command}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lvmbench {args.command}: interrupted (files are written atomically, and an interrupted training "
              f"resumes from its last checkpoint)", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 (the one place that turns any failure into one line)
        line = _environment_error(err)
        if line is not None:
            print(f"lvmbench {args.command}: error: {line}", file=sys.stderr)
            return 2
        print(f"lvmbench {args.command}: internal error ({type(err).__name__}: {_one_line(str(err))[:200]}); "
              f"{_crash_log(args.command, err)}; please report it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
