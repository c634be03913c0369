"""Compare two sets of lvmbench tables (two ``results/tables`` directories) number by number.

Used to show that a change of engine leaves the benchmark's numbers as they were: for every
CSV table present in both directories, every column present in both is compared cell by
cell. Wall-clock columns (``wall_time``, ``time``) and the run-directory path (``run``)
are left out; so are Markdown/LaTeX renderings, which are written from the CSVs.

    python benchmarks/compare_tables.py OLD_TABLES NEW_TABLES

Prints one line per table: ``identical`` (bit for bit), or the columns that differ with
their largest absolute difference; columns present in only one table are listed. Exits 1
when any shared column differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SKIP = {"wall_time", "time", "run"}


def compare(old: pd.DataFrame, new: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(differing shared columns with their largest difference, columns only in one table)."""
    shared = [c for c in old.columns if c in new.columns and c not in SKIP]
    only = sorted(set(old.columns) ^ set(new.columns))
    if len(old) != len(new):
        return [f"{len(old)} rows against {len(new)}"], only
    differ = []
    for c in shared:
        a, b = old[c].reset_index(drop=True), new[c].reset_index(drop=True)
        if a.equals(b):
            continue
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            x, y = a.to_numpy(float), b.to_numpy(float)
            same_nan = np.isnan(x) == np.isnan(y)
            diff = np.nanmax(np.abs(x - y)) if (~np.isnan(x)).any() else 0.0
            if same_nan.all() and diff == 0:
                continue
            differ.append(f"{c} (max |diff| {diff:.3g})")
        else:
            differ.append(f"{c} ({int((a.astype(str) != b.astype(str)).sum())} cells)")
    return differ, only


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    args = p.parse_args(argv)
    failed = False
    for path in sorted(args.old.glob("*.csv")):
        other = args.new / path.name
        if not other.exists():
            print(f"{path.name}: missing in {args.new}")
            failed = True
            continue
        differ, only = compare(pd.read_csv(path), pd.read_csv(other))
        extra = f"; columns in one table only: {', '.join(only)}" if only else ""
        print(f"{path.name}: " + (f"DIFFER in {', '.join(differ)}" if differ else "identical") + extra)
        failed |= bool(differ)
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
