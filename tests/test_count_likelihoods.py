"""Count likelihoods (poisson, negative_binomial, zero_inflated_negative_binomial): their
log-densities against scipy's on known values, the observed library size of scVI, the encoder's
log1p input, and count data that train from a sparse file read in chunks."""

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats as st
import torch

import pyrovae
from pyrovae import LIKELIHOODS, ConfigError, DataError
from pyrovae.app.cli import main
from pyrovae.parts.nets import ENCODERS

X = torch.tensor([[0., 1, 3, 10, 2], [5, 0, 0, 1, 7]])
G = X.shape[1]


def _built(spec, log_theta=None):
    lik = LIKELIHOODS.build(spec, event_shape=(G,))
    if log_theta is not None:
        with torch.no_grad():
            lik.log_theta.copy_(log_theta)
    return lik


def test_poisson_is_scipys():
    lik = _built("poisson")
    log_mu = torch.tensor([[0.3, -1.0, 1.2, 2.0, 0.0], [1.5, -0.5, 0.1, 0.0, 2.2]])
    expected = st.poisson.logpmf(X.numpy(), np.exp(log_mu.numpy())).sum(-1)
    np.testing.assert_allclose(lik.log_prob(lik.given((log_mu,), X), X, 1).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("dispersion", ["feature", "shared"])
def test_negative_binomial_is_scipys_with_mean_mu_and_inverse_dispersion_theta(dispersion):
    log_theta = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0]) if dispersion == "feature" else torch.tensor(0.7)
    lik = _built({"name": "negative_binomial", "dispersion": dispersion}, log_theta)
    assert lik.log_theta.shape == ((G,) if dispersion == "feature" else ())
    log_mu = torch.tensor([[0.3, -1.0, 1.2, 2.0, 0.0], [1.5, -0.5, 0.1, 0.0, 2.2]])
    mu, theta = np.exp(log_mu.numpy()), np.exp(log_theta.numpy())
    # scipy's nbinom(n, p) counts failures before n successes: n = theta, p = theta / (theta + mu)
    expected = st.nbinom.logpmf(X.numpy(), theta, theta / (theta + mu)).sum(-1)
    np.testing.assert_allclose(lik.log_prob((log_mu,), X, 1).detach().numpy(), expected, rtol=1e-5)
    d = lik((log_mu,), 1)
    np.testing.assert_allclose(d.base_dist.mean.detach().numpy(), mu, rtol=1e-5)
    np.testing.assert_allclose(d.base_dist.variance.detach().numpy(), mu + mu ** 2 / theta, rtol=1e-5)


def test_zero_inflated_negative_binomial_mixes_a_point_mass_at_zero():
    log_theta = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0])
    lik = _built("zero_inflated_negative_binomial", log_theta)
    log_mu = torch.tensor([[0.3, -1.0, 1.2, 2.0, 0.0], [1.5, -0.5, 0.1, 0.0, 2.2]])
    gate_logits = torch.tensor([[-1.0, 0.5, 0.0, 2.0, -3.0], [0.2, 1.0, -0.5, 0.0, 0.3]])
    mu, theta, pi = np.exp(log_mu.numpy()), np.exp(log_theta.numpy()), 1 / (1 + np.exp(-gate_logits.numpy()))
    nb = st.nbinom.logpmf(X.numpy(), theta, theta / (theta + mu))
    expected = np.where(X.numpy() == 0, np.log(pi + (1 - pi) * np.exp(nb)), np.log1p(-pi) + nb).sum(-1)
    np.testing.assert_allclose(lik.log_prob((log_mu, gate_logits), X, 1).detach().numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(lik.mean((log_mu, gate_logits)).detach().numpy(), (1 - pi) * mu, rtol=1e-5)


@pytest.mark.parametrize("name", ["poisson", "negative_binomial", "zero_inflated_negative_binomial"])
def test_an_observed_library_scales_proportions_by_each_points_total_count(name):
    lik = _built({"name": name, "library": "observed"})
    out = tuple(torch.randn(3, 2, G) for _ in range(lik.num_params))  # (particles, points, genes)
    log_mean = lik.given(out, X)[0]
    torch.testing.assert_close(log_mean.exp().sum(-1), X.sum(-1).expand(3, 2))  # sum_i mu_i = l per point
    torch.testing.assert_close(log_mean - log_mean.logsumexp(-1, keepdim=True), out[0].log_softmax(-1))
    # a point with no counts takes l = 1; codes without data take the geometric mean of the training totals
    torch.testing.assert_close(lik.given(out, torch.zeros(2, G))[0].exp().sum(-1), torch.ones(3, 2))
    lik.eval()
    lik.given(out, X * 100)  # not in training: not counted
    expected = torch.tensor([16.0 * 13.0, 1.0]).log().sum() / 4  # the training calls saw 16, 13, then 0, 0
    torch.testing.assert_close(lik.given(out, None)[0].exp().sum(-1), expected.exp().expand(3, 2))
    learned = _built(name)
    assert learned.given(out, X) is out  # a learned library reads nothing of the batch


def test_counts_are_checked_and_options_are_one_line():
    with pytest.raises(DataError, match=r"whole numbers >= 0 \(counts\).*raw counts"):
        _built("negative_binomial").check_data(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(DataError, match="value -1"):
        _built("poisson").check_data(torch.tensor([[-1.0, 1.0]]))
    with pytest.raises(ConfigError, match="library = 'seen': valid: learned, observed"):
        LIKELIHOODS.build({"name": "poisson", "library": "seen"}, "model.likelihood", event_shape=(G,))
    with pytest.raises(ConfigError, match="dispersion = 'gene': valid: feature, shared"):
        LIKELIHOODS.build({"name": "negative_binomial", "dispersion": "gene"}, event_shape=(G,))
    with pytest.raises(ConfigError, match="input = 'log'"):
        ENCODERS.build({"name": "mlp", "input": "log"}, event_shape=(G,), latent_dim=2)


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_an_encoder_with_log1p_input_reads_log_one_plus_x(name):
    shape = (1, 4, 4)
    x = torch.poisson(torch.full((3, *shape), 4.0))
    torch.manual_seed(0)
    log1p = ENCODERS.build({"name": name, "input": "log1p"}, event_shape=shape, latent_dim=2)
    torch.manual_seed(0)
    plain = ENCODERS.build(name, event_shape=shape, latent_dim=2)
    for a, b in zip(log1p(x), plain(torch.log1p(x))):
        torch.testing.assert_close(a, b)


def _counts(n, genes=30, types=3, seed=0):
    """Counts of ``types`` cell types with their own expression profiles and depths from 20 to 400."""
    rng = np.random.default_rng(seed)
    profiles = rng.dirichlet(np.full(genes, 0.3), types)
    kind = rng.integers(0, types, n)
    depth = rng.integers(20, 400, n)
    return rng.poisson(profiles[kind] * depth[:, None]).astype(np.float32), kind


@pytest.mark.parametrize("family", ["vae", "cvae", "m2", "hvae"])
def test_every_family_trains_on_counts_with_an_observed_library(family, tmp_path):
    x, kind = _counts(200)
    np.savez(tmp_path / "counts.npz", x=x, y=kind)
    overrides = [f"model.family={family}", "data.name=file", f"data.path={tmp_path / 'counts.npz'}",
                 "data.test_fraction=0.2", "train.epochs=4", "train.eval_every=1", "train.batch_size=40",
                 "model.latent_dim=2",
                 'model.likelihood={name = "negative_binomial", library = "observed"}',
                 'model.encoder={name = "mlp", hidden = [32], input = "log1p"}',
                 'model.decoder={name = "mlp", hidden = [32]}']
    if family == "m2":
        overrides.append("data.labeled=40")
    run = pyrovae.train(pyrovae.load_config(None, overrides), tmp_path / "run")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    metrics = [m for m in metrics if m.get("test_elbo") is not None]
    assert np.isfinite(metrics[-1]["test_elbo"]) and metrics[-1]["test_elbo"] > metrics[0]["test_elbo"]
    model = pyrovae.load(tmp_path / "run")
    assert model.likelihood.library_count > 0  # the training totals were seen and kept in the checkpoint
    assert torch.isfinite(model.encode(pyrovae.Batch(torch.from_numpy(x[:5]), torch.from_numpy(kind[:5])))).all()


def test_a_sparse_count_file_trains_streamed_in_chunks(tmp_path, monkeypatch):
    """A CSR matrix in an .npz (scipy.sparse.save_npz) is read row by row, never made dense whole."""
    x, _ = _counts(300, genes=40)
    sp.save_npz(tmp_path / "counts.npz", sp.csr_matrix(x))
    dense_whole = []
    original = sp.csr_matrix.toarray

    def watched(self, *args, **kwargs):
        if self.shape[0] >= 300:
            dense_whole.append(self.shape)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sp.csr_matrix, "toarray", watched)
    code = main(["train", "-q", "--out", str(tmp_path / "run"), "--set", "data.name=file",
                 "--set", f"data.path={tmp_path / 'counts.npz'}", "--set", "data.in_memory=false",
                 "--set", "train.epochs=2", "--set", "train.batch_size=50",
                 "--set", 'model.likelihood={name = "negative_binomial", library = "observed"}',
                 "--set", 'model.encoder={name = "mlp", hidden = [16], input = "log1p"}'])
    assert code == 0 and not dense_whole, dense_whole
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_the_library_mean_for_prior_draws_comes_from_training_steps_only():
    nb = LIKELIHOODS.build({"name": "negative_binomial", "library": "observed"}, event_shape=(3,))
    x = torch.tensor([[1.0, 2.0, 5.0], [0.0, 0.0, 7.0]])  # totals 8 and 7
    log_mean = torch.zeros(2, 3, requires_grad=True)
    with torch.no_grad():  # an evaluation: not counted
        nb.given((log_mean,), x)
    assert nb.library_count == 0
    nb.given((log_mean,), x)  # a training step
    nb.eval()
    nb.given((log_mean,), x)  # eval mode: not counted
    assert nb.library_count == 2
    assert nb.log_library(None).item() == pytest.approx((math.log(8) + math.log(7)) / 2)


def test_uint8_counts_reach_a_count_likelihood_as_counts(tmp_path, capsys):
    """uint8 values are pixels (times 1/255) for the image likelihoods, and counts, as they are, for a
    count likelihood: a run of counts stored as uint8 trains, evaluates and encodes with no data.scale."""
    x = np.random.default_rng(0).poisson(2.0, (200, 12)).astype(np.uint8)
    np.save(tmp_path / "counts.npy", x)
    args = ["--set", "data.name=file", "--set", f"data.path={tmp_path / 'counts.npy'}", "--set", "train.epochs=2",
            "--set", "model.likelihood=poisson", "--set", 'model.encoder={name = "mlp", hidden = [16]}',
            "--set", 'model.decoder={name = "mlp", hidden = [16]}', "-q"]
    assert main(["train", *args, "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "run"), "--nll-samples", "3", "--iwae-samples", "2", "-q"]) == 0
    config = pyrovae.load_config(None, [a for a in args[1::2] if "=" in a][:5])
    points = config.load_data().train_split.read(torch.arange(5))
    assert torch.equal(points, points.round()) and float(points.max()) > 1  # counts, not counts / 255
    # asked for, the scale is the user's; the message then says how to get counts back
    code = main(["train", *args, "--set", "data.scale=0.5", "--out", str(tmp_path / "scaled")])
    err = capsys.readouterr().err
    assert code == 2 and "count likelihoods take raw counts" in err and "data.scale = 1" in err, err
