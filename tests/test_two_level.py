"""The ``two_level_vae`` family: Tomczak & Welling's two-level VAE, its networks, its ELBO term by
term, its VampPrior over z2 with pseudo-inputs in the data's space, and a config that trains it."""

import math

import torch
from pyro import poutine

import pyrovae
from pyrovae import Batch, TwoLevelVAE
from pyrovae.infer.estimators import resolve_estimator
from pyrovae.parts.nets import GatedDense

VAMP = {"name": "vamp", "num_pseudo_inputs": 5, "pseudo_input_range": [0.0, 1.0]}


def _gated(n_in, n_out):
    return 2 * (n_in * n_out + n_out)


def test_its_networks_are_the_papers_mlp_model():
    """784 pixels, z1 = z2 = 40, 300 gated units: the parameters of jmtomczak/vae_vampprior's
    HVAE_2level, layer by layer (q(z2|x) 784-300-300-(40,40); q(z1|x,z2) [784-300, 40-300]-600-300-(40,40);
    p(z1|z2) 40-300-300-(40,40); p(x|z1,z2) [40-300, 40-300]-600-300-784)."""
    model = TwoLevelVAE((1, 28, 28))
    q_z2 = _gated(784, 300) + _gated(300, 300) + 300 * 80 + 80
    q_z1 = _gated(784, 300) + _gated(40, 300) + _gated(600, 300) + 300 * 80 + 80
    p_z1 = _gated(40, 300) + _gated(300, 300) + 300 * 80 + 80
    p_x = 2 * _gated(40, 300) + _gated(600, 300) + 300 * 784 + 784
    assert sum(p.numel() for p in model.parameters()) == q_z2 + q_z1 + p_z1 + p_x == 2_431_024
    assert sum(isinstance(m, GatedDense) for m in model.modules()) == 2 + 3 + 2 + 3
    assert model.encoder.log_var_range == model.decoder2.log_var_range == model.log_var_range == (-6.0, 2.0)


def _by_hand(model, x, guide_trace):
    """log p(x, z1, z2) - log q(z1, z2 | x) from the networks themselves, at the guide's draws."""
    z1, z2 = guide_trace.nodes["z1"]["value"], guide_trace.nodes["z2"]["value"]
    normal = torch.distributions.Normal
    loc2, log_var2 = model.encoder(x)
    h = model.encoder1(x.flatten(1), z2)
    loc1, log_var1 = h[..., :model.latent_dim], h[..., model.latent_dim:].clamp(-6, 2)
    log_q = (normal(loc2, (0.5 * log_var2).exp()).log_prob(z2).sum(-1)
             + normal(loc1, (0.5 * log_var1).exp()).log_prob(z1).sum(-1))
    p_loc, p_log_var = model.decoder2(z2)
    logits = model.decoder(z1, z2)
    log_p = (normal(0.0, 1.0).log_prob(z2).sum(-1) + normal(p_loc, (0.5 * p_log_var).exp()).log_prob(z1).sum(-1)
             + torch.distributions.Bernoulli(logits=logits).log_prob(x.flatten(1)).sum(-1))
    return log_p - log_q


def test_its_elbo_is_the_papers_term_by_term_in_value_and_gradient():
    torch.manual_seed(0)
    model = TwoLevelVAE((64,), latent_dim=4, latent_dim2=3, hidden=16)
    x = (torch.rand(6, 64) > 0.5).float()
    guide_trace = poutine.trace(model.guide).get_trace(Batch(x), None)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(Batch(x), None)
    model_trace.compute_log_prob(), guide_trace.compute_log_prob()
    traced = sum(model_trace.nodes[s]["log_prob"] for s in ("z2", "z1", "x")) \
        - sum(guide_trace.nodes[s]["log_prob"] for s in ("z2", "z1"))
    by_hand = _by_hand(model, x, guide_trace)
    torch.testing.assert_close(traced, by_hand)
    params = [p for p in model.parameters()]
    g1 = torch.autograd.grad(traced.sum(), params, retain_graph=True, allow_unused=True)
    g2 = torch.autograd.grad(by_hand.sum(), params, allow_unused=True)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


def test_estimator_b_is_estimator_a_in_expectation_and_the_bounds_are_ordered():
    """The guide draws z2 first, so KL(q(z1 | x, z2) || p(z1 | z2)) is closed-form at the drawn z2:
    reconstruction - KL estimates the same ELBO as log p - log q; and ELBO < IWAE_k."""
    torch.manual_seed(1)
    model = TwoLevelVAE((64,), latent_dim=4, latent_dim2=3, hidden=16)
    x = (torch.rand(5, 64) > 0.5).float()
    assert resolve_estimator("auto", model, Batch(x)) == "analytic"
    with torch.no_grad():
        b, a = model.terms(Batch(x), 4000, kl=True), model.terms(Batch(x), 4000, kl=False)
    assert b.kl_exact
    torch.testing.assert_close(b.reconstruction.mean(0) - b.kl.mean(0), a.elbo.mean(0), atol=0.15, rtol=0)
    iwae = torch.logsumexp(a.log_weights, 0) - math.log(4000)
    assert (a.elbo.mean(0) < iwae).all()


def test_its_vampprior_is_over_z2_with_pseudo_inputs_in_the_datas_space_read_once_per_step():
    torch.manual_seed(2)
    model = TwoLevelVAE((1, 8, 8), latent_dim=4, latent_dim2=3, hidden=16, prior=VAMP)
    assert model.prior.pseudo_inputs.shape == (5, 1, 8, 8)
    x = (torch.rand(7, 1, 8, 8) > 0.5).float()
    assert resolve_estimator("auto", model, Batch(x)) == "mc"
    calls = []
    model.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    model.terms(Batch(x), num_particles=3)
    assert sorted(calls) == [5, 7]  # q(z2 | x) once on the batch, once on the pseudo-inputs, for 3 particles
    u = model.prior.pseudo_inputs.detach().clamp(0, 1)
    z2 = torch.randn(4, 3)
    q = model.posterior2(*model.encoder(u))
    expected = torch.logsumexp(q.log_prob(z2[:, None]), -1) - math.log(5)
    torch.testing.assert_close(model.prior.distribution().log_prob(z2), expected)


def test_a_config_names_it_and_it_trains_samples_and_scores():
    from pyrovae.app.config_files import config_from_dict

    config = config_from_dict({"model": {"family": "two_level_vae", "latent_dim": 3, "latent_dim2": 2, "hidden": 16,
                                         "prior": VAMP}})
    data = pyrovae.load_dataset("digits")
    model = pyrovae.build_model(config.model, data.event_shape)
    assert isinstance(model, TwoLevelVAE) and model.prior.pseudo_inputs.shape == (5, *data.event_shape)
    metrics = pyrovae.fit(model, data, max_steps=3, progress=False)
    assert math.isfinite(metrics[-1]["test_elbo"]) and model.sample(4).shape == (4, *data.event_shape)
    assert torch.isfinite(pyrovae.log_likelihood(model, model.sample(3, mean=False), 10)).all()
