"""Seed bundles (lvmbench.train): cells equal but for the seed train as one batched
computation, and each member is as if trained alone.

On CPU the equality is bitwise where it can be: a member's random numbers are a function of
its own seed and the step (lvmbench.noise), matrix products compute each member's slice as
they would alone, and the gradient of a sum over members is each member's gradient exactly.
The exception is torch's elementwise transcendental functions (exp, log1p, softplus): they
run a SIMD loop with a scalar tail, so an element can take the other code path when the
member sits at another offset of the batched tensor, which moves its last bit. That
happens when a member's tensors are not a whole number of SIMD vectors, as for the
6-unit sigmoid belief net below; there the test allows a relative difference of 1e-5
after 12 steps (a few float32 ulps grown by the steps), far below any statistical effect.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import lvmbench.train as train_module
from lvmbench import noise
from lvmbench.grid import Bundle, bundles
from lvmbench.runs import RunDir
from lvmbench.settings import Cell
from lvmbench.train import train, train_bundle

TRAIN = {"steps": 12, "batch_size": 8, "log_every": 3, "checkpoint_every": 5, "snapshots": 3}
CASES = {  # one cell of every model family and estimator kind, small
    "gmm-score": dict(dataset="gmm2d", model="gmm", objective="iwae", K=3, estimator="score",
                      dataset_options={"n_train": 64, "n_test": 16}, model_options={"hidden": [8]}),
    "gmm-exact": dict(dataset="gmm2d", model="gmm", objective="exact", K=1, estimator="exact",
                      dataset_options={"n_train": 64, "n_test": 16}, model_options={"hidden": [8]}),
    "gmm-vimco": dict(dataset="gmm2d", model="gmm", objective="iwae", K=3, estimator="vimco",
                      dataset_options={"n_train": 64, "n_test": 16}, model_options={"hidden": [8]}),
    "lg-reparam-piwae": dict(dataset="gaussian_toy", model="linear_gaussian", objective="piwae",
                             objective_options={"M": 2}, K=4, estimator="reparam",
                             dataset_options={"dim": 3, "n_train": 64, "n_test": 16}),
    "vae-dreg": dict(dataset="mnist5k", model="vae", objective="iwae", K=3, estimator="dreg",
                     model_options={"hidden": [[16, 16]], "latent": [3]}),
    "vae2-stl": dict(dataset="mnist5k", model="vae", objective="elbo", K=2, estimator="stl",
                     model_options={"layers": 2, "hidden": [[16, 16], [8, 8]], "latent": [4, 2]}),
    "vae-iaf-reparam": dict(dataset="mnist5k", model="vae", objective="iwae", K=2, estimator="reparam",
                            model_options={"hidden": [[16, 16]], "latent": [3],
                                           "flow": {"type": "iaf", "layers": 1, "hidden": 8}}),
    "sbn-nvil": dict(dataset="mnist5k", model="sbn", objective="iwae", K=2, estimator="score_baseline",
                     model_options={"latent": [6]}, estimator_options={"hidden": 8}),
    "catvae-gumbel": dict(dataset="mnist5k", model="catvae", objective="iwae", K=2, estimator="gumbel",
                          model_options={"variables": 3, "classes": 3, "hidden": [16]},
                          estimator_options={"anneal_rate": 0.01}),
    "vqvae-st": dict(dataset="mnist5k", model="vqvae", objective="iwae", K=1, estimator="straight_through",
                     model_options={"positions": 2, "codebook": 4, "dim": 3, "hidden": [16]}),
}


def cell(case: str, seed: int, **train) -> Cell:
    return Cell.from_dict({"experiment": "b", "seed": seed, "train": {**TRAIN, **train}, **CASES[case]})


def run_dir(root: Path, c: Cell) -> Path:
    return root / "runs" / c.id


def checkpoint(root: Path, c: Cell) -> dict:
    return torch.load(run_dir(root, c) / "checkpoint.pt", weights_only=False)


#: cases whose tensors are not whole SIMD vectors per member (module docstring)
UNALIGNED = {"sbn-nvil"}


def assert_same_member(a: dict, b: dict, rtol: float = 0.0) -> None:
    """The same parameters, estimator state, Adam moments and curve (times aside): bitwise, or
    within ``rtol``."""
    def same(x: torch.Tensor, y: torch.Tensor) -> bool:
        return torch.equal(x, y) if rtol == 0 or not x.is_floating_point() else torch.allclose(x, y, rtol, 1e-7)

    for part in ("model", "estimator"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert same(a[part][key], b[part][key]), (part, key)
    for name, moments in a["optimizer"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert same(moments[key], b["optimizer"][name][key]), (name, key)
    rows_a, rows_b = torch.tensor([r[:4] for r in a["rows"]]), torch.tensor([r[:4] for r in b["rows"]])
    assert same(rows_a, rows_b)
    assert a["step"] == b["step"]


@pytest.mark.parametrize("case", CASES)
def test_a_member_of_a_bundle_equals_the_cell_alone(tmp_path, case):
    """Member 1 of the bundle {0, 1, 2} ends bitwise equal to the bundle {1}, for every model
    family and kind of estimator, and the three members differ from one another."""
    cells = [cell(case, s) for s in (0, 1, 2)]
    train_bundle(cells, [run_dir(tmp_path / "bundle", c) for c in cells], progress=False, device="cpu")
    train(cells[1], run_dir(tmp_path / "alone", cells[1]), progress=False, device="cpu")
    assert_same_member(checkpoint(tmp_path / "bundle", cells[1]), checkpoint(tmp_path / "alone", cells[1]),
                       rtol=1e-5 if case in UNALIGNED else 0.0)
    models = [checkpoint(tmp_path / "bundle", c)["model"] for c in cells]
    for a, b in ((0, 1), (1, 2)):
        assert any(not torch.equal(models[a][k], models[b][k]) for k in models[a]), (a, b)
    summary = json.loads((run_dir(tmp_path / "bundle", cells[1]) / "train.json").read_text())
    assert summary["status"] == "finished" and summary["bundle"] == [0, 1, 2] and math.isfinite(summary["final_bound"])
    snaps = RunDir(run_dir(tmp_path / "bundle", cells[2])).snapshots()
    assert [int(p.stem.removeprefix("step")) for p in snaps] == [0, 6, 12]


def test_a_member_that_diverges_is_stopped_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    """A NaN injected into member 1 at step 7 (its 0-based step 6) stops member 1 only: it is
    recorded as diverged at step 7 with the parameters after step 6, and members 0 and 2 end
    exactly as they would alone."""
    cells = [cell("lg-reparam-piwae", s) for s in (0, 1, 2)]
    target = noise.key_of(train_module.stream_seed(1, "sampling"))
    real = train_module.Member.forward

    def poisoned(self, x):
        decoder, encoder, bound, baseline = real(self, x)
        source = noise.active()
        bad = (source.key == target) & (source.counter == 6)
        poison = torch.where(bad, torch.tensor(math.nan), torch.tensor(1.0))
        return decoder * poison, encoder * poison, bound * poison, baseline

    monkeypatch.setattr(train_module.Member, "forward", poisoned)
    train_bundle(cells, [run_dir(tmp_path / "bundle", c) for c in cells], progress=False, device="cpu")
    assert "b/gaussian_toy/linear_gaussian/piwae/K4/reparam/seed1: diverged at step 7" in capsys.readouterr().err
    summary = json.loads((run_dir(tmp_path / "bundle", cells[1]) / "train.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at"] == 7 and summary["steps"] == 6
    assert RunDir(run_dir(tmp_path / "bundle", cells[1])).divergence() == "diverged at step 7"
    diverged = checkpoint(tmp_path / "bundle", cells[1])
    assert all(torch.isfinite(v).all() for v in diverged["model"].values())
    monkeypatch.setattr(train_module.Member, "forward", real)
    six = cell("lg-reparam-piwae", 1, steps=6)
    train(six, tmp_path / "six", progress=False, device="cpu")
    six_state = torch.load(tmp_path / "six" / "checkpoint.pt", weights_only=False)
    for key in six_state["model"]:
        assert torch.equal(diverged["model"][key], six_state["model"][key]), key
    for c in (cells[0], cells[2]):
        train(c, run_dir(tmp_path / "alone", c), progress=False, device="cpu")
        assert_same_member(checkpoint(tmp_path / "bundle", c), checkpoint(tmp_path / "alone", c))


def test_members_resume_from_their_own_checkpoints_in_any_bundle(tmp_path, train_steps):
    """A bundle interrupted after its step-5 checkpoint resumes exactly: as the same bundle,
    and member by member in other bundles (each resumes from its own checkpoint), all
    bitwise equal to an uninterrupted run; members at different steps train in groups."""
    cells = [cell("vae-dreg", s) for s in (0, 1)]
    whole = tmp_path / "whole"
    train_bundle(cells, [run_dir(whole, c) for c in cells], progress=False, device="cpu")
    calls = train_steps.calls
    for root, regroup in ((tmp_path / "same", False), (tmp_path / "regrouped", True)):
        train_steps.run(interrupt_at=8)
        with pytest.raises(KeyboardInterrupt):
            train_bundle(cells, [run_dir(root, c) for c in cells], progress=False, device="cpu")
        train_steps.run()
        if regroup:
            train(cells[1], run_dir(root, cells[1]), progress=False, device="cpu")
            assert len(calls) == 7  # from the step-5 checkpoint
            third = cell("vae-dreg", 2)
            train_bundle([cells[0], third], [run_dir(root, c) for c in (cells[0], third)], progress=False,
                         device="cpu")
            assert len(calls) == 7 + 7 + 12  # member 0 from step 5, the new member from 0: two groups
        else:
            train_bundle(cells, [run_dir(root, c) for c in cells], progress=False, device="cpu")
            assert len(calls) == 7
        for c in cells:
            assert_same_member(checkpoint(whole, c), checkpoint(root, c))


def test_bundles_group_cells_that_differ_only_in_seed():
    cells = [cell("gmm-score", s) for s in (3, 0, 1, 2, 4)] + [cell("gmm-vimco", 0)]
    got = bundles(cells, 2)
    assert [b.id for b in got] == ["b/gmm2d/gmm/iwae/K3/score/seed0+1", "b/gmm2d/gmm/iwae/K3/score/seed2+3",
                                   "b/gmm2d/gmm/iwae/K3/score/seed4", "b/gmm2d/gmm/iwae/K3/vimco/seed0"]
    finished = frozenset({cells[1].id, cells[2].id})  # seeds 0 and 1 are trained: they stay alone
    assert [b.id for b in bundles(cells, 4, finished)][:3] == [
        "b/gmm2d/gmm/iwae/K3/score/seed0", "b/gmm2d/gmm/iwae/K3/score/seed1", "b/gmm2d/gmm/iwae/K3/score/seed2+3+4"]
    assert Bundle(tuple(cells[:2])).spec == {k: v for k, v in cells[0].to_dict().items() if k != "seed"}


def test_a_bundle_keeps_its_rule_name_when_others_finish():
    """A cluster job re-plans the workflow after other bundles finished (they then stay
    alone): the bundle it runs must have the same key, the train rule's name, as in the
    main process, and keys differ between bundles."""
    cells = [cell("gmm-score", s) for s in range(5)] + [cell("gmm-vimco", 0)]
    before = bundles(cells, 2)
    assert len({b.key for b in before}) == len(before)
    for done in before:
        after = {b.key for b in bundles(cells, 2, frozenset(c.id for c in done.cells))}
        assert {b.key for b in before if b is not done} <= after


@pytest.mark.slow
def test_compiled_and_eager_training_agree(tmp_path):
    """``compile: true`` (torch.compile of the batched step) trains as eager does, to float32
    rounding: inductor fuses and reorders the arithmetic, so the agreement is not bitwise but
    within rtol 1e-4 of every parameter after 6 steps (rounding grown by 6 Adam steps; a wrong
    gradient or stream would differ at 1e-2 or more). It also records that it compiled."""
    cells = [cell("lg-reparam-piwae", s, steps=6) for s in (0, 1)]
    for mode in (False, True):
        train_bundle(cells, [run_dir(tmp_path / str(mode), c) for c in cells], progress=False, device="cpu",
                     compile=mode)
    for c in cells:
        eager, compiled = checkpoint(tmp_path / "False", c), checkpoint(tmp_path / "True", c)
        for key in eager["model"]:
            torch.testing.assert_close(compiled["model"][key], eager["model"][key], rtol=1e-4, atol=1e-6)
        assert json.loads((run_dir(tmp_path / "True", c) / "train.json").read_text())["compiled"] is True
