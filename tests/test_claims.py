"""Paper claims as checks (lvmbench.report.claims) on small hand-made tables, where the
statistic of every claim is known exactly: differences, their standard errors over seeds,
regression slopes, and "not run" when cells are missing."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lvmbench.errors import LvmbenchError
from lvmbench.report.claims import check_claims, claims_table


def summary_rows():
    """nll(objective, K, seed): iwae below vae at K=5 and 50 by 1 and 2 nats, equal at K=1;
    seeds move both by +-0.1, so the paired difference has no spread but each mean has."""
    rows = []
    for K, gap in ((1, 0.0), (5, 1.0), (50, 2.0)):
        for seed, noise in ((0, -0.1), (1, 0.1)):
            for objective, nll in (("vae", 90.0 - K / 50), ("iwae", 90.0 - K / 50 - gap)):
                rows.append({"cell": f"e/d/m/{objective}/K{K}/reparam/seed{seed}", "experiment": "e", "dataset": "d",
                             "model": "m", "objective": objective, "K": K, "estimator": "reparam", "seed": seed,
                             "status": "ok", "test_nll": nll + noise, "test_log_px": -(nll + noise),
                             "test_log_px_se": 0.3, "ess_mean": 10.0, "active_units": "10+2",
                             "final_train_bound": -nll, "schedule": "constant, 10 steps"})
    return pd.DataFrame(rows)


def gradvar_rows(slope=0.5):
    """SNR = 3 K^slope for the decoder at the final step (step 10), and K^-slope for the
    encoder, 1000 draws each (floor sqrt(2 / (1000 pi)) = 0.025, 3x of it 0.076: every value
    is above); the initial snapshot (step 0) must be ignored."""
    rows = []
    for K in (1, 10, 100):
        for step in (0, 10):
            for group, snr in (("decoder", 3 * K ** slope), ("encoder", K ** -slope)):
                rows.append({"cell": f"e/d/m/iwae/K{K}/reparam/seed0", "experiment": "e", "dataset": "d", "model": "m",
                             "objective": "iwae", "trained_objective": "iwae", "K": K, "estimator": "reparam",
                             "trained_estimator": "reparam", "seed": 0, "group": group, "step": step,
                             "skipped": None, "snr_mean": snr if step else 1.0, "var_mean": 1 / K,
                             "draws": 1000, "final_step": step == 10})
    return pd.DataFrame(rows)


def ok_runs(gradvar):
    """The summary rows of the runs gradvar measured, all ok (claims read only ok runs)."""
    return gradvar.drop_duplicates("cell")[["cell", "experiment", "dataset", "model", "objective", "K", "estimator",
                                            "seed"]].assign(status="ok", schedule="constant, 10 steps")


def claim(**kw):
    return {"name": "c", "claim": "text", "source": "paper", "tolerance": 0.0, **kw}


def one(c, summary=None, gradvar=None):
    if summary is None:
        summary = summary_rows() if gradvar is None or gradvar.empty else ok_runs(gradvar)
    return claims_table([c], summary, pd.DataFrame() if gradvar is None else gradvar).iloc[0]


def test_less_with_pairs_reports_the_worst_group_and_its_se():
    """With K >= 2 the differences are -1 and -2 nats: the worst is -1, and its SE combines the
    two means' SEs over seeds (0.1 each). With K=1 included the worst difference is exactly 0,
    which `less` accepts at tolerance 0 (the check is d <= tolerance)."""
    row = one(claim(check="less", metric="nll", a={"objective": "iwae"}, b={"objective": "vae"},
                    pair=["K"], filter={"K": {"min": 2}}))
    assert row.result == "pass"
    assert row.value == pytest.approx(-1.0, abs=1e-12)
    # each mean over 2 seeds has SE sd/sqrt(2) = 0.1414/1.414 = 0.1; the difference sqrt(0.1^2 + 0.1^2)
    assert row.uncertainty == pytest.approx(math.sqrt(2) * 0.1, rel=1e-9)
    assert row.n_cells == 8 and row.schedule == "constant, 10 steps"
    at_k1 = one(claim(check="less", metric="nll", a={"objective": "iwae"}, b={"objective": "vae"}, pair=["K"],
                      tolerance=0.0))
    assert at_k1.value == pytest.approx(0.0, abs=1e-12) and at_k1.result == "pass"  # equal is within tolerance 0
    assert one(claim(check="greater", metric="nll", a={"objective": "iwae"}, b={"objective": "vae"},
                     pair=["K"], filter={"K": {"min": 2}})).result == "fail"


def test_decreasing_along_k():
    row = one(claim(check="decreasing", metric="nll", a={"objective": "iwae"}, along="K"))
    # nll(iwae) at K = 1, 5, 50: 89.98, 88.9, 87.0: consecutive changes -1.08 and -1.9
    assert row.result == "pass" and row.value == pytest.approx(-1.08, abs=1e-9)
    assert one(claim(check="increasing", metric="nll", a={"objective": "iwae"}, along="K")).result == "fail"


def test_slope_of_snr_against_k():
    row = one(claim(check="slope", metric="snr:decoder", a={"estimator": "reparam"}, along="K", target=0.5,
                    tolerance=0.1), gradvar=gradvar_rows(0.5))
    assert row.result == "pass" and row.value == pytest.approx(0.5, abs=1e-12) and row.uncertainty < 1e-9
    enc = one(claim(check="slope", metric="snr:encoder", a={"estimator": "reparam"}, along="K", target=-0.5,
                    tolerance=0.1), gradvar=gradvar_rows(0.5))
    assert enc.value == pytest.approx(-0.5, abs=1e-12) and enc.result == "pass"
    off = one(claim(check="slope", metric="snr:decoder", a={"estimator": "reparam"}, along="K", target=0.5,
                    tolerance=0.1), gradvar=gradvar_rows(0.3))
    assert off.result == "fail" and off.value == pytest.approx(0.3, abs=1e-12)


def test_order_and_at_most():
    s = summary_rows()
    order = one(claim(check="order", metric="nll", cells=[{"objective": "iwae", "K": 50}, {"objective": "iwae", "K": 5},
                                                          {"objective": "vae", "K": 5}]), s)
    assert order.result == "pass" and order.value == pytest.approx(-1.0, abs=1e-9)  # 88.9 - 89.9
    variance = one(claim(check="at_most", metric="variance:encoder", a={"K": 100}, tolerance=0.01),
                   gradvar=gradvar_rows())
    assert variance.result == "pass" and variance.value == pytest.approx(0.01)
    assert one(claim(check="at_most", metric="variance:encoder", a={"K": 10}, tolerance=0.01),
               gradvar=gradvar_rows()).result == "fail"


def test_a_claim_whose_cells_did_not_run_is_not_run_never_passed():
    s = summary_rows()
    s.loc[s.objective == "vae", "status"] = "diverged at step 3"
    row = one(claim(check="less", metric="nll", a={"objective": "iwae"}, b={"objective": "vae"}, pair=["K"]), s)
    assert row.result == "not run" and np.isnan(row.value)
    missing = one(claim(check="less", metric="nll", a={"objective": "miwae"}, b={"objective": "vae"}))
    assert missing.result == "not run"
    assert one(claim(check="slope", metric="snr:decoder", a={"estimator": "reparam"}, along="K", target=0.5),
               gradvar=pd.DataFrame()).result == "not run"


@pytest.mark.parametrize("bad, words", [
    ([{"name": "x"}], ["missing"]),
    ([claim(check="bigger", metric="nll")], ["check", "bigger"]),
    ([claim(check="less", metric="nll")], ["needs", "a, b"]),
    ([claim(check="less", metric="elbo", a={}, b={})], ["metric", "elbo"]),
    ([claim(check="at_most", metric="nll", a={}, tolerance=math.nan)], ["tolerance", "finite"]),
    ([claim(check="at_most", metric="nll", a={}), claim(check="at_most", metric="nll", a={})], ["second claim"]),
    ("not a list", ["list"]),
])
def test_malformed_claims_are_one_line(bad, words):
    with pytest.raises(LvmbenchError) as err:
        check_claims(bad)
    assert "\n" not in str(err.value) and all(w in str(err.value) for w in words)


def test_slope_leaves_out_snr_at_its_monte_carlo_floor():
    """With 10 draws the SNR floor is sqrt(2 / (10 pi)) = 0.252, and 3x of it 0.757: the encoder's
    SNR K^-0.5 is 0.316 at K=10 and 0.1 at K=100, both below, so one K is left and the slope is
    not run; the decoder's (3, 9.5, 30) all enter and give 0.5 exactly."""
    few = gradvar_rows(0.5).assign(draws=10)
    enc = one(claim(check="slope", metric="snr:encoder", a={"estimator": "reparam"}, along="K", target=-0.5,
                    tolerance=0.1), gradvar=few)
    assert enc.result == "not run" and "fewer than two" in enc.detail
    dec = one(claim(check="slope", metric="snr:decoder", a={"estimator": "reparam"}, along="K", target=0.5,
                    tolerance=0.1), gradvar=few)
    assert dec.result == "pass" and dec.value == pytest.approx(0.5, abs=1e-12)
