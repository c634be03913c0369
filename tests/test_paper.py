"""Experiment configs (one per paper) and the published-vs-reproduced table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lvmbench.errors import LvmbenchError
from lvmbench.grid import plan, resolve_variant
from lvmbench.report.paper import check_published, published_table

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "config" / "experiments").glob("*.yaml"))


def test_every_paper_has_a_config():
    assert {p.stem for p in EXPERIMENTS} == {"burda2016", "rainforth2018", "tucker2018", "discrete"}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_config_plans_in_every_variant(path):
    """Full, short, smoke and cpu variants all plan; every published number names a cell the
    full protocol runs (a typo in a label would leave it 'not run' forever); every config
    carries claims, and each claim selects cells of the full protocol."""
    config = yaml.safe_load(path.read_text())
    assert set(config["variants"]) == {"short", "smoke", "cpu"}
    cells = {name: plan({**config, "variant": name}).cells for name in (None, "short", "smoke", "cpu")}
    assert all(cells.values())
    assert len(cells["smoke"]) <= 6  # CI runs each smoke variant end to end
    full = pd.DataFrame([{"experiment": c.experiment, "dataset": c.dataset, "model": c.model,
                          "objective": c.objective, "K": c.K, "estimator": c.estimator} for c in cells[None]])
    for row in config["published"]:
        keys = [k for k in ("experiment", "dataset", "model", "objective", "K", "estimator") if k in row]
        hit = (full[keys] == pd.Series({k: row[k] for k in keys})).all(axis=1)
        assert hit.any(), f"{path.name}: published row matches no cell: {row}"
    assert config["claims"]
    for claim in config["claims"]:
        selectors = [claim.get("where") or {}] + [{**(claim.get("where") or {}), **s}
                                                  for s in [claim.get("a"), claim.get("b"), *claim.get("cells", [])] if s]
        for selector in selectors:
            keys = [k for k in selector if k in full]
            hit = (full[keys].astype(str) == pd.Series({k: str(selector[k]) for k in keys})).all(axis=1)
            assert hit.any(), f"{path.name}: claim {claim['name']} selects no cell: {selector}"


def test_variants_merge_and_delete():
    config = {"a": {"b": 1, "c": 2}, "variants": {"s": {"a": {"b": None, "d": 3}}}}
    assert resolve_variant({**config, "variant": "s"}) == {"a": {"c": 2, "d": 3}}
    assert resolve_variant(config) == {"a": {"b": 1, "c": 2}}
    with pytest.raises(LvmbenchError, match="variant 'x' is not defined; this config has: s"):
        resolve_variant({**config, "variant": "x"})


GOOD = {"experiment": "e", "dataset": "d", "model": "m", "objective": "iwae", "K": 5, "metric": "nll",
        "value": 85.0, "tolerance": 0.5, "source": "paper"}


@pytest.mark.parametrize("row, needle", [
    ({k: v for k, v in GOOD.items() if k != "value"}, "missing ['value']"),
    ({**GOOD, "colour": 1}, "unknown keys ['colour']"),
    ({**GOOD, "metric": "bpd"}, "metric must be one of"),
    ({**GOOD, "metric": "snr_slope"}, "snr_slope needs group"),
    ({k: v for k, v in GOOD.items() if k != "K"}, "nll needs K"),
    ({**GOOD, "value": "85"}, "value must be a number"),
    ({**GOOD, "tolerance": -1}, "tolerance must be >= 0"),
])
def test_malformed_published_rows(row, needle):
    with pytest.raises(LvmbenchError, match=None) as err:
        check_published([row])
    assert needle in str(err.value) and "\n" not in str(err.value)


def _summary(values: dict[int, float], estimator: str = "reparam") -> pd.DataFrame:
    return pd.DataFrame([{"experiment": "e", "dataset": "d", "model": "m", "objective": "iwae", "K": 5,
                          "estimator": estimator, "seed": s, "status": "ok", "test_log_px": -v, "test_nll": v,
                          "schedule": "constant, 10 steps"} for s, v in values.items()])


def test_published_table_values():
    """Reproduced mean and sd over seeds, the difference and the tolerance verdict; a number
    whose cells did not run is marked so; a power law K^0.5 gives SNR slope 0.5."""
    summary = _summary({0: 85.2, 1: 85.6})
    Ks = np.array([1, 10, 100])
    gradvar = pd.DataFrame([{"experiment": "e", "dataset": "d", "model": "m", "trained_objective": "iwae",
                             "objective": "iwae", "K": k, "estimator": "reparam", "group": "decoder", "seed": 0,
                             "snr_mean": 3 * np.sqrt(k), "draws": 1000, "skipped": np.nan, "final_step": True}
                            for k in Ks])
    published = [GOOD, {**GOOD, "K": 50, "value": 84.0},
                 {**GOOD, "metric": "snr_slope", "group": "decoder", "estimator": "reparam", "value": 0.5,
                  "tolerance": 0.1}]
    del published[2]["K"]
    t = published_table(published, summary, gradvar)
    first = t.iloc[0]
    assert first.reproduced_mean == pytest.approx(85.4) and first.reproduced_sd == pytest.approx(np.std([85.2, 85.6], ddof=1))
    assert first.difference == pytest.approx(0.4) and bool(first.within_tolerance)
    assert first.n_seeds == 2 and first.schedule == "constant, 10 steps"
    assert t.iloc[1].schedule == "not run" and t.iloc[1].n_seeds == 0
    assert t.iloc[2].reproduced_mean == pytest.approx(0.5) and bool(t.iloc[2].within_tolerance)


def test_published_row_must_name_the_estimator_when_ambiguous():
    summary = pd.concat([_summary({0: 85.0}), _summary({0: 86.0}, "dreg")])
    with pytest.raises(LvmbenchError, match="matches estimators \\['dreg', 'reparam'\\]: name one"):
        published_table([GOOD], summary, pd.DataFrame())
    assert published_table([{**GOOD, "estimator": "dreg"}], summary, pd.DataFrame()).iloc[0].reproduced_mean == 86.0


def test_the_benchmarks_find_their_cells(monkeypatch):
    """benchmarks/bench.py plans Table 1's 12 MNIST cells of burda2016 (full and short) and
    the default config's small cells it bundles: a config change that breaks them (as a
    published row of another experiment once did) fails here, not in a benchmark run."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench

    for variant in (None, "short"):
        cells = bench.burda_plan(variant).cells
        assert len(cells) == 12 and {c.dataset for c in cells} == {"mnist"}
        assert {(c.model, c.objective, c.K) for c in cells} == {
            (m, o, K) for m in ("vae1", "vae2") for o in ("vae", "iwae") for K in (1, 5, 50)}
    assert [c.id for c in bench.small_cells()] == list(bench.SMALL_CELLS)
