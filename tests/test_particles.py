"""What a model sees: with one particle (the default) the batch's own shapes and no particle
dimension, as under Pyro's Trace_ELBO; with L > 1 a particle plate where the family can take one,
else the particles one after another. Both schedules give the same estimate, in value and
gradient, from the same draws."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyrovae
from pyrovae import Batch, ConfigError, Model
from pyrovae.app.cli import main


class Plain(Model):
    """A family in plain Pyro that broadcasts over a particle plate (it never says so)."""

    def __init__(self, event_shape, latent_dim: int = 3):
        super().__init__(event_shape)
        d = event_shape[0]
        self.latent_dim = latent_dim
        self.encoder, self.decoder = nn.Linear(d, 2 * latent_dim), nn.Linear(latent_dim, d)
        self.seen = []

    def decode(self, z):
        return self.decoder(z)

    def model(self, batch, num_data=None):
        with self.data_plate(batch, num_data):
            z = pyro.sample("z", dist.Normal(batch.x.new_zeros(len(batch), self.latent_dim), 1.0).to_event(1))
            self.seen.append(tuple(z.shape))
            pyro.sample("x", dist.Normal(self.decode(z), 1.0).to_event(1), obs=batch.x)

    def guide(self, batch, num_data=None):
        loc, log_scale = self.encoder(batch.x).chunk(2, -1)
        with self.data_plate(batch, num_data):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


class Normed(Plain):
    """ProdLDA's way: a BatchNorm1d over (M, D) in the decoder, which a particle plate breaks."""

    def __init__(self, event_shape, latent_dim: int = 3):
        super().__init__(event_shape, latent_dim)
        self.norm = nn.BatchNorm1d(event_shape[0])

    def decode(self, z):
        return self.norm(self.decoder(z))


def batch(m=8, d=5):
    return Batch(torch.randn(m, d, generator=torch.Generator().manual_seed(1)))


def test_one_particle_is_the_batchs_own_shape():
    model = Plain((5,))
    model.dry_run(batch(), 100)
    model.seen.clear()
    model.terms(batch(), 1, 100)
    assert model.seen == [(8, 3)]  # no particle dimension
    model.seen.clear()
    model.terms(batch(), 4, 100)
    assert model.seen == [(4, 8, 3)] and model.particles_vectorized  # shown at the dry run


def test_a_family_that_cannot_take_a_particle_plate_runs_its_particles_one_after_another():
    model = Normed((5,))
    model.dry_run(batch(), 100)
    assert model.particles_vectorized is False and "RuntimeError" in model.particles_note
    model.seen.clear()
    terms = model.terms(batch(), 3, 100)
    assert model.seen == [(8, 3)] * 3 and terms.elbo.shape == (3, 8)


def test_the_two_schedules_give_the_same_estimate_in_value_and_gradient(monkeypatch):
    """The same draws in both: torch's normal sampler fills a tensor of 16 or more in blocks, so 4 draws of
    (8, 3) are not one draw of (4, 8, 3); here every reparameterized draw reads the next values of one stream."""
    stream = torch.randn(4096, generator=torch.Generator().manual_seed(3))

    def estimate(vectorized):
        used = [0]

        def rsample(self, sample_shape=torch.Size()):
            shape = self._extended_shape(sample_shape)
            n = shape.numel()
            eps = stream[used[0]:used[0] + n].reshape(shape)
            used[0] += n
            return self.loc + eps * self.scale

        monkeypatch.setattr(torch.distributions.Normal, "rsample", rsample)
        torch.manual_seed(0)
        model = Plain((5,))
        model.particles_vectorized = vectorized
        terms = model.terms(batch(), 4, 100)
        loss = -terms.elbo.mean()
        grads = torch.autograd.grad(loss, list(model.parameters()))
        return terms.elbo.detach(), grads

    (a, ga), (b, gb) = estimate(True), estimate(False)
    assert torch.allclose(a, b, atol=1e-5)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-5)


def test_a_declared_vectorizable_family_that_is_not_is_one_line():
    class Claims(Normed):
        vectorizable = True

    with pytest.raises(ConfigError, match="declares vectorizable = True, but 2 particles in a particle plate fail"):
        Claims((5,)).dry_run(batch(), 100)


def test_a_family_declared_sequential_is_never_tried_on_a_plate():
    class Says(Normed):
        vectorizable = False

    model = Says((5,))
    model.dry_run(batch(), 100)
    model.seen.clear()
    model.terms(batch(), 2, 100)
    assert model.seen == [(8, 3)] * 2 and model.particles_note is None


@pytest.mark.parametrize("engine", ["torch", "pyro"])
def test_a_batchnorm_family_trains_with_several_particles_under_both_engines(tmp_path, engine, capsys):
    pyrovae.MODELS.register("normed_test")(Normed)
    table = tmp_path / "t.npy"
    import numpy as np

    np.save(table, np.random.default_rng(0).normal(size=(120, 5)).astype(np.float32))
    code = main(["train", "--set", "model.family=normed_test", "--set", "data.name=file", "--set",
                 f"data.path={table}", "--set", "train.num_particles=3", "--set", f"train.engine={engine}",
                 "--set", "train.estimator=mc", "--set", "train.epochs=2", "--set", "train.batch_size=20",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "model (Normed): L > 1 particles run one after another" in err


class Pretrained(Plain):
    """A family whose constructor loads pretrained weights (as a pasted example may)."""

    WEIGHTS = {"weight": torch.full((5, 3), 0.25), "bias": torch.zeros(5)}

    def __init__(self, event_shape, latent_dim: int = 3):
        super().__init__(event_shape, latent_dim)
        self.decoder.load_state_dict(self.WEIGHTS)


def test_a_constructor_that_loads_weights_builds_without_warnings_and_trains_them(tmp_path):
    import numpy as np

    pyrovae.MODELS.register("pretrained_test")(Pretrained)
    np.save(tmp_path / "t.npy", np.random.default_rng(0).normal(size=(120, 5)).astype(np.float32))
    config = pyrovae.load_config(None, ["model.family=pretrained_test", "data.name=file",
                                        f"data.path={tmp_path / 't.npy'}", "train.epochs=1", "train.batch_size=20",
                                        "train.progress=false"])
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # as a user's terminal shows them
        warnings.simplefilter("always")
        run = pyrovae.train(config, tmp_path / "run")
    assert not [w for w in caught if "meta" in str(w.message)], [str(w.message)[:80] for w in caught]
    trained = pyrovae.load(run).decoder.weight.detach()
    assert trained.shape == (5, 3) and not torch.equal(trained, Pretrained.WEIGHTS["weight"])
    assert float((trained - 0.25).abs().max()) < 0.5  # trained from the loaded weights, not from a fresh draw


# -- sampling from the prior: no made-up batch ------------------------------------------------------
class Masked(Plain):
    """Pyro's CVAE's way: the model conditions on part of x (a mask over its values)."""

    def model(self, batch, num_data=None):
        with self.data_plate(batch, num_data):
            visible = batch.x * (batch.x > 0)  # reads the values of x
            z = pyro.sample("z", dist.Normal(visible[:, :self.latent_dim], 1.0).to_event(1))
            self.seen.append(tuple(z.shape))
            pyro.sample("x", dist.Normal(self.decode(z), 1.0).to_event(1), obs=batch.x)


def test_a_model_that_takes_only_shapes_from_x_samples_its_prior_with_no_data():
    model = Plain((5,))
    model.dry_run(batch(), 100)
    with pytest.raises(pyrovae.data.batch.NeedsData):
        Batch.without_data(3, (5,)).x.sum()  # its values cannot be read
    assert model.sample(6).shape == (6, 5)  # x.new_zeros and obs=x: shapes only


def test_a_model_that_reads_its_input_is_sampled_given_real_points_and_says_so(tmp_path, capsys):
    from pyrovae.models.base import NeedsInput

    model = Masked((5,))
    model.dry_run(batch(), 100)
    with pytest.raises(NeedsInput, match=r"cannot be sampled from its prior alone: it reads the data's values"):
        model.sample(4)
    given = model.sample(4, batch=batch())
    assert given.shape == (4, 5)
    import numpy as np

    pyrovae.MODELS.register("masked_test")(Masked)
    np.save(tmp_path / "t.npy", np.random.default_rng(0).normal(size=(120, 5)).astype(np.float32))
    run = tmp_path / "run"
    assert main(["train", "--set", "model.family=masked_test", "--set", "data.name=file", "--set",
                 f"data.path={tmp_path / 't.npy'}", "--set", "train.epochs=1", "--set", "train.batch_size=20", "-q",
                 "--out", str(run)]) == 0, capsys.readouterr().err
    assert (run / "samples.png").exists()
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "9", "--out", str(tmp_path / "s.png")]) == 0
    err = capsys.readouterr().err
    assert "cannot be sampled from its prior alone" in err and "drawn given the first 9 test points" in err, err
    assert (tmp_path / "s.png").exists()
