"""Labels per minibatch (``labels = "per_minibatch"``), as Pyro's M2 example takes them: the epoch
plan of all-labelled and all-unlabelled minibatches (an exact, unbiased split of the objective),
what the family sees, both engines, resume bit for bit, ranks equal to one process, and Pyro's
SS-VAE pasted (examples/plugins/ss_vae.py) from the CLI: train, evaluate, sample, encode, resume."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

import pyrovae
from pyrovae import TrainConfig
from pyrovae.app.checkpoint import read_checkpoint
from pyrovae.app.cli import main
from pyrovae.data.sampling import epoch_plan, labeled_draws, steps_per_epoch
from pyrovae.infer.algorithms import build_algorithm
from pyrovae.training.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugins" / "ss_vae.py"
SMALL = ["model.family=ss_vae", "model.z_dim=4", "model.hidden_layers=[32]", "data.labeled=100",
         "train.batch_size=50", "train.progress=false", "train.eval_every=100"]
pytestmark = pytest.mark.filterwarnings("ignore::pyrovae.PosteriorCollapseWarning")


def labeled_mask(n, k, seed=0):
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]] = True
    return mask


@pytest.mark.parametrize("n, k, m, w", [(103, 10, 8, 1.0), (103, 10, 8, 9.0), (50, 50, 7, 1.0), (64, 3, 16, 2.0)])
def test_an_epoch_of_labelled_and_unlabelled_minibatches_sums_to_the_objective(n, k, m, w):
    """Every step is one kind; the unlabelled points come once each, the labelled draws w N_l in
    all; the steps' weighted sums add up to J = sum_u f + w sum_l f exactly, and (1 / size) times a
    step's sum, averaged over the epoch's K steps (a step drawn uniformly), is J / N."""
    labeled = labeled_mask(n, k)
    f = torch.randn(n, dtype=torch.float64)
    plan = epoch_plan(n, m, seed=3, epoch=2, labeled=labeled, labeled_weight=w, per_minibatch=True)
    assert len(plan) == steps_per_epoch(n, m, 0, k, w, per_minibatch=True)
    unlabelled = torch.cat([s.index for s in plan if s.labeled is False] or [torch.zeros(0, dtype=torch.long)])
    draws = torch.cat([s.index for s in plan if s.labeled])
    assert sorted(unlabelled.tolist()) == sorted((~labeled).nonzero().squeeze(-1).tolist())
    assert bool(labeled[draws].all()) and draws.numel() == labeled_draws(k, w)
    assert all(s.index.numel() <= m and s.labeled in (True, False) for s in plan)
    sums = torch.stack([(f[s.index] * (1 if s.weight is None else s.weight.double())).sum() for s in plan])
    target = f[~labeled].sum() + w * f[labeled].sum()
    torch.testing.assert_close(sums.sum(), target)
    torch.testing.assert_close(torch.stack([total / s.size for total, s in zip(sums, plan)]).mean(), target / n)
    again = epoch_plan(n, m, seed=3, epoch=2, labeled=labeled, labeled_weight=w, per_minibatch=True)
    assert all(torch.equal(a.index, b.index) for a, b in zip(plan, again))  # from (seed, epoch) only
    other = epoch_plan(n, m, seed=3, epoch=3, labeled=labeled, labeled_weight=w, per_minibatch=True)
    assert any(not torch.equal(a.index, b.index) for a, b in zip(plan, other))


def test_a_weight_that_is_no_whole_number_of_cycles_sums_to_the_objective_in_expectation():
    n, k, m, w = 64, 6, 16, 2.5  # 15 draws: two whole cycles, then half of one drawn at random
    labeled, f = labeled_mask(n, k), torch.randn(n, dtype=torch.float64)
    target = f[~labeled].sum() + w * f[labeled].sum()
    sums = torch.stack([sum((f[s.index] * (1 if s.weight is None else s.weight.double())).sum()
                            for s in epoch_plan(n, m, 0, epoch, labeled, labeled_weight=w, per_minibatch=True))
                        for epoch in range(1, 401)])
    assert abs(float(sums.mean() - target)) < 4 * float(sums.std()) / 20 + 1e-9
    assert float(sums.std()) > 0


def test_with_weight_one_each_labelled_point_comes_once_and_weighs_one():
    labeled = labeled_mask(200, 30)
    plan = epoch_plan(200, 20, seed=0, epoch=1, labeled=labeled, per_minibatch=True)
    draws = torch.cat([s.index for s in plan if s.labeled])
    assert sorted(draws.tolist()) == sorted(labeled.nonzero().squeeze(-1).tolist())
    assert all(s.weight is None for s in plan)
    assert sum(s.labeled for s in plan) == 2 and len(plan) == 2 + math.ceil(170 / 20)


@pytest.fixture(scope="module")
def digits():
    return pyrovae.load_dataset("digits", labeled=100)


def ss_vae():
    namespace = {}
    exec(compile(PLUGIN.read_text(), str(PLUGIN), "exec"), namespace)  # registers ss_vae once per process
    return namespace["SSVAE"]


def test_the_family_sees_minibatches_of_one_kind_with_every_label_or_none(digits):
    family = pyrovae.MODELS.get("ss_vae") if "ss_vae" in pyrovae.MODELS else ss_vae()
    model = family((1, 8, 8), 10, z_dim=4, hidden_layers=[16])
    trainer = Trainer(model, digits, TrainConfig(batch_size=50, epochs=1, progress=False, eval_every=100),
                      {"name": "adam"})
    seen, step = [], trainer.algorithm.loss

    def watched(batch, *args, **kwargs):
        seen.append(None if batch.y is None else (len(batch), bool(batch.labeled.all())))
        return step(batch, *args, **kwargs)

    trainer.algorithm.loss = watched
    trainer.run()
    assert seen.count((50, True)) == 2 and seen.count(None) == math.ceil((digits.num_train - 100) / 50)
    assert len(seen) == trainer.steps_per_epoch == 2 + math.ceil((digits.num_train - 100) / 50)
    record = trainer.metrics[-1]
    assert record["samples_seen"] == digits.num_train and record["test_accuracy"] is not None


def test_the_pyro_engine_picks_its_elbo_from_both_kinds_of_minibatch(digits):
    """The guide enumerates y only on unlabelled minibatches: TraceEnum_ELBO is chosen from both
    kinds, and a step under Pyro's ELBO equals the torch engine's at the same draws (y summed out)."""
    family = pyrovae.MODELS.get("ss_vae") if "ss_vae" in pyrovae.MODELS else ss_vae()
    model = family((1, 8, 8), 10, z_dim=4, hidden_layers=[16])
    cfg = TrainConfig(batch_size=50, engine="pyro", estimator="mc", progress=False)
    trainer = Trainer(model, digits, cfg, {"name": "adam"})
    assert type(trainer.algorithm.elbo).__name__ == "TraceEnum_ELBO"
    torch_engine = build_algorithm(model, TrainConfig(batch_size=50, estimator="mc"), "mc", digits.num_train)
    for labeled in (True, False):
        batch, _ = trainer.minibatch(torch.arange(8), labeled=labeled)
        assert (batch.y is None) != labeled
        losses = []
        for algorithm in (trainer.algorithm, torch_engine):
            pyro.set_rng_seed(0)
            losses.append(torch.stack([algorithm.loss(batch, None, 1.0, 8).loss.detach() for _ in range(200)]))
        # labelled: the same draws of z, the same number; unlabelled: y summed out alike, z drawn in other shapes
        difference, error = losses[0].mean() - losses[1].mean(), (losses[0].var() / 100) ** 0.5
        assert abs(float(difference)) < (1e-4 if labeled else 4 * float(error) + 1e-4)
        steps = []
        for beta in (0.3, 1.0):  # the ELBO reported at beta is TraceEnum_ELBO's at beta = 1, from one pass
            pyro.set_rng_seed(1)
            steps.append(trainer.algorithm.loss(batch, None, beta, 8))
        torch.testing.assert_close(steps[0].elbo_sum, steps[1].objective_sum)
        assert float(steps[0].objective_sum) < float(steps[1].objective_sum)  # KL(q(y, z) || p) > 0 counts 0.3


def test_labelled_points_in_every_minibatch_are_refused_for_such_a_family(digits):
    family = pyrovae.MODELS.get("ss_vae") if "ss_vae" in pyrovae.MODELS else ss_vae()
    with pytest.raises(pyrovae.ConfigError, match="labels = 'per_minibatch'"):
        Trainer(family((1, 8, 8), 10, z_dim=4, hidden_layers=[16]), digits,
                TrainConfig(batch_size=50, labeled_per_batch=10), {"name": "adam"})


@pytest.fixture
def project(tmp_path):
    shutil.copy(PLUGIN, tmp_path / "ss_vae.py")
    return tmp_path


def cli(project, *args, sets=()):
    flags = [a for s in (*SMALL, *sets) for a in ("--set", s)]
    return main([*args, "--plugins", str(project / "ss_vae.py"), *flags])


def test_pyros_ss_vae_pasted_trains_evaluates_samples_encodes_and_resumes_bit_for_bit(project, capsys):
    run, straight = project / "run", project / "straight"
    # a step budget ends the first run mid-epoch (33 steps an epoch: 31 unlabelled, 2 labelled)
    assert cli(project, "train", "--out", str(run), sets=["train.epochs=2", "train.max_steps=20"]) == 0
    assert read_checkpoint(run / "checkpoint.pt")["counters"]["epoch_step"] == 20
    assert cli(project, "train", "--out", str(run), "--resume", sets=["train.epochs=2", "train.max_steps=0"]) == 0
    assert cli(project, "train", "--out", str(straight), sets=["train.epochs=2"]) == 0
    a, b = (read_checkpoint(r / "checkpoint.pt") for r in (run, straight))
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["test_accuracy"] is not None
    plugin = str(project / "ss_vae.py")
    assert main(["evaluate", str(run), "--plugins", plugin, "--nll-samples", "10", "--iwae-samples", "5"]) == 0
    scores = json.loads((run / "evaluation.json").read_text())
    assert scores["test_elbo"] <= scores["test_iwae"] + 0.5 < 0  # scored without the labels: log p(x)
    capsys.readouterr()
    assert main(["sample", str(run), "--plugins", plugin, "--out", str(project / "s.png"), "--label", "3"]) == 0
    assert (project / "s.png").stat().st_size > 0
    assert main(["encode", str(run), "--plugins", plugin, "--out", str(project / "z.npz")]) == 0
    with np.load(project / "z.npz") as encoded:
        assert encoded["latents"].shape[1] == 4


def test_a_label_given_to_sample_is_the_class_drawn(project):
    """The model observes its labels (obs=ys): sampling draws x only, the label site stays the given class."""
    run = project / "run"
    assert cli(project, "train", "--out", str(run), sets=["train.epochs=1"]) == 0
    model = pyrovae.load(run, plugins=[str(project / "ss_vae.py")])
    pyro.set_rng_seed(0)
    three = model.sample(6, y=3)
    pyro.set_rng_seed(0)
    five = model.sample(6, y=5)
    assert three.shape == (6, 1, 8, 8) and not torch.equal(three, five)
