"""Pyro's own examples ported to families (examples/plugins/): its conditional VAE and ProdLDA,
each trained from the CLI, evaluated, sampled, encoded and resumed bit for bit. (Pyro's SS-VAE,
which takes labels per minibatch, is in tests/test_per_minibatch.py.)"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import pyrovae
from pyrovae.app.checkpoint import read_checkpoint
from pyrovae.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "train.progress=false", "--set", "train.eval_every=100", "-q"]
pytestmark = pytest.mark.filterwarnings("ignore::pyrovae.PosteriorCollapseWarning")

EXAMPLES = {
    "pyro_cvae": ("pyro_cvae_digits.toml", ["model.hidden_1=32", "model.hidden_2=32"]),
    "prodlda": ("prodlda_digits.toml", ["model.hidden=32", "model.num_topics=5"]),
}


@pytest.fixture
def example(tmp_path, request):
    family = request.param
    shutil.copytree(ROOT / "examples" / "plugins", tmp_path / "plugins")
    (tmp_path / "configs").mkdir()
    config, sets = EXAMPLES[family]
    shutil.copy(ROOT / "examples" / "configs" / config, tmp_path / "configs")
    return tmp_path, family, tmp_path / "configs" / config, [a for s in sets for a in ("--set", s)]


@pytest.mark.parametrize("example", sorted(EXAMPLES), indirect=True)
def test_a_pyro_example_trains_evaluates_samples_encodes_and_resumes_bit_for_bit(example, capsys):
    tmp_path, family, config, sets = example
    plugin = str(tmp_path / "plugins" / f"{family}.py")
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert main(["train", str(config), "--out", str(run), "--set", "train.epochs=1", *sets, *FAST]) == 0
    assert main(["train", "--out", str(run), "--resume", "--plugins", plugin, "--set", "train.epochs=2", *FAST]) == 0
    assert main(["train", str(config), "--out", str(straight), "--set", "train.epochs=2", *sets, *FAST]) == 0
    a, b = (read_checkpoint(r / "checkpoint.pt") for r in (run, straight))
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    assert {"samples.png", "reconstructions.png"} <= {p.name for p in run.iterdir()}
    assert main(["evaluate", str(run), "--plugins", plugin, "--nll-samples", "10", "--iwae-samples", "5"]) == 0
    scores = json.loads((run / "evaluation.json").read_text())
    assert scores["test_elbo"] <= scores["test_iwae"] + 0.5 < 0
    capsys.readouterr()
    assert main(["sample", str(run), "--plugins", plugin, "--out", str(tmp_path / "s.png"), "--num", "9"]) == 0
    assert "drawn given the first 9 test points" in capsys.readouterr().err  # both read their input's values
    assert main(["encode", str(run), "--plugins", plugin, "--out", str(tmp_path / "z.npz")]) == 0
    with np.load(tmp_path / "z.npz") as encoded:
        assert encoded["latents"].shape == (180, 2 if family == "pyro_cvae" else 5)
    model = pyrovae.load(run, plugins=[plugin])
    test = (pyrovae.load_dataset("digits", binarize="none", scale=1.0) if family == "prodlda"
            else pyrovae.load_dataset("digits")).test_batch[:4]
    assert model.sample(4, batch=test).shape == (4, 1, 8, 8)  # the observed site or, for the CVAE, its returned loc


def test_prodlda_reads_the_digits_as_counts_and_runs_its_particles_one_after_another(tmp_path):
    """Its BatchNorm1d and softmax(dim=1) assume the batch's own shapes: more particles run one
    after another, and the counts (0..16 ink pixels a block) reach it unscaled."""
    namespace = {}
    exec(compile((ROOT / "examples" / "plugins" / "prodlda.py").read_text(), "prodlda.py", "exec"), namespace)
    config = pyrovae.load_config(ROOT / "examples" / "configs" / "prodlda_digits.toml",
                                 ["model.hidden=16", "train.epochs=1"])
    data = config.load_data()
    counts = data.test_batch.x
    assert float(counts.max()) == 16 and torch.equal(counts, counts.round())
    model = pyrovae.MODELS.get("prodlda")((1, 8, 8), num_topics=3, hidden=16)
    model.dry_run(data.test_head(4), data.num_train)
    assert model.particles_vectorized is False and "RuntimeError" in model.particles_note or "ValueError" in \
        model.particles_note
    terms = model.terms(data.test_head(4), 3, data.num_train)
    assert terms.elbo.shape == (3, 4) and bool(torch.isfinite(terms.elbo).all())


LABEL_READER = '''
import pyro, pyro.distributions as dist, torch, torch.nn.functional as F
import pyrovae


@pyrovae.MODELS.register("reads_y")
class ReadsY(pyrovae.Model):
    """A conditional model with its own number of classes (no num_classes argument), as Pyro's examples write one."""

    def __init__(self, event_shape):
        super().__init__(event_shape)
        self.decoder = torch.nn.Linear(2 + 10, 64)
        self.encoder = torch.nn.Linear(64, 4)

    def model(self, batch, num_data=None):
        x = batch.x.reshape(len(batch), -1)
        y = F.one_hot(batch.y, 10).to(x.dtype) if batch.y is not None else x.new_zeros(len(batch), 10)
        with self.data_plate(batch, num_data):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(batch), 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(torch.cat([z, y], -1))).to_event(1), obs=x)

    def guide(self, batch, num_data=None):
        x = batch.x.reshape(len(batch), -1)
        with self.data_plate(batch, num_data):
            loc, scale = self.encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(scale) + 1e-3).to_event(1))
'''


def test_label_draws_for_a_family_that_reads_labels_of_its_own_and_is_one_line_for_one_that_does_not(tmp_path,
                                                                                                      capsys):
    plugin = tmp_path / "reads_y.py"
    plugin.write_text(LABEL_READER)
    run = tmp_path / "run"
    assert main(["train", "--plugins", str(plugin), "--set", "model.family=reads_y", "--set", "train.epochs=1",
                 "--out", str(run), *FAST]) == 0
    assert main(["sample", str(run), "--plugins", str(plugin), "--out", str(tmp_path / "three.png"),
                 "--label", "3"]) == 0
    vae = tmp_path / "vae"
    assert main(["train", "--set", "train.epochs=1", "--out", str(vae), *FAST]) == 0
    capsys.readouterr()
    assert main(["sample", str(vae), "--out", str(tmp_path / "v.png"), "--label", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--label 3: the run's model (VAE) reads no labels" in err
