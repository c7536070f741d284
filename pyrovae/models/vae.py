"""The ``vae`` family: Kingma & Welling's VAE, a Pyro ``model`` and ``guide`` that serve every
prior, likelihood and network.

Kingma & Welling, "Auto-Encoding Variational Bayes" (2014):

- model:  z_i ~ p(z),  x_i ~ p_theta(x | z_i)  for i in the minibatch;
- guide:  z_i ~ q_phi(z | x_i) = N(mu(x_i), diag(sigma^2(x_i))), the encoder emitting mu and
  zeta = log sigma^2, so that z = mu + sigma * eps with eps ~ N(0, I) (reparameterization).

Both run under the plate "data" (``self.data_plate``) with the minibatch as the subsample:
each log-probability is scaled by N/M, so any Pyro ELBO of a minibatch of M points is an
unbiased estimate of the ELBO of all N points (the paper's estimator, eq. 8).

:meth:`VAE.terms` overrides the trace-derived terms of :class:`~pyrovae.Model` with closed
forms through the parts (``likelihood.log_prob``, ``prior.log_prob``,
``prior.kl_from_normal``) and the reparameterization written out, which skips Pyro's tracing
(it costs more than the networks on small models); ``tests/test_families.py`` ties the two
together in value and gradient.
"""

import functools
from typing import Optional, Sequence, Union

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.data.batch import as_batch
from pyrovae.errors import ConfigError
from pyrovae.models.base import Model
from pyrovae.models.registry import MODELS
from pyrovae.models.terms import Terms
from pyrovae.parts.likelihoods import LIKELIHOODS, Likelihood
from pyrovae.parts.nets import DECODERS, ENCODERS
from pyrovae.parts.posteriors import POSTERIORS, gaussian_log_q, has_closed_form_kl, reparameterized
from pyrovae.parts.priors import PRIORS, Prior
from pyrovae.registry import Spec


def closed_form(method):
    """A :class:`VAE` method written with the class's closed forms: it runs where they describe the
    model (:attr:`VAE.closed_forms_hold`); elsewhere :class:`~pyrovae.Model`'s general method of
    the same name runs, from the traces (the one place this choice is made)."""
    general = getattr(Model, method.__name__)

    @functools.wraps(method)
    def chosen(self, *args, **kwargs):
        return (method if self.closed_forms_hold else general)(self, *args, **kwargs)

    return chosen


@MODELS.register("vae")
class VAE(Model):
    """A variational autoencoder as a Pyro model and guide.

    :param tuple event_shape: the shape of one data point, e.g. ``(1, 28, 28)`` or ``(64,)``.
    :param int latent_dim: the dimension of z.
    :param prior: a registered prior name or spec (``"standard_normal"``, ``"gaussian"``,
        ``{"name": "mixture", "num_components": 10}``), or a :class:`~pyrovae.parts.priors.Prior`.
    :param likelihood: a registered likelihood name or spec (``"bernoulli"``,
        ``{"name": "gaussian", "scale": 1.0}``, ...), or a :class:`~pyrovae.parts.likelihoods.Likelihood`.
    :param encoder: a network spec (``"mlp"``, ``{"name": "mlp", "hidden": [500]}``, ``"conv"``)
        or an ``nn.Module`` mapping x to ``(loc, log_var)``.
    :param decoder: a network spec or an ``nn.Module`` mapping z to
        ``(..., likelihood.num_params, *event_shape)``.
    :param posterior: a registered posterior name or spec (``"gaussian"``, the paper's;
        ``{"name": "iaf", "num_flows": 2}``, :mod:`pyrovae.parts.posteriors`), or a module mapping the
        encoder's ``(loc, log_var)`` to q(z | x).
    :param str name: the Pyro name prefix of the parameters (give two VAEs trained by plain
        SVI in one process different names).

    Example with plain Pyro::

        vae = VAE((64,), latent_dim=2, prior="mixture", likelihood="bernoulli")
        svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
                             pyro.infer.TraceMeanField_ELBO())
        svi.step(x_batch, num_data=N)
    """

    vectorizable = True  # its programs broadcast over a particle plate (Pyro's vectorize_particles)

    plate_nesting = 1  # the plate "data"
    observed_site = "x"
    #: the networks' defaults as a config writes them out
    config_defaults = {"encoder": {"name": "mlp", "hidden": [256], "activation": "relu"},
                       "decoder": {"name": "mlp", "hidden": [256], "activation": "relu"}}

    def __init__(self, event_shape: Sequence[int], latent_dim: int = 2,
                 prior: Union[Spec, Prior] = "standard_normal",
                 likelihood: Union[Spec, Likelihood] = "bernoulli",
                 encoder: Union[Spec, nn.Module] = "mlp", decoder: Union[Spec, nn.Module] = "mlp",
                 posterior: Union[Spec, nn.Module] = "gaussian", name: str = ""):
        super().__init__(event_shape, name)
        self.latent_dim = int(latent_dim)
        self.prior = prior if isinstance(prior, nn.Module) else \
            PRIORS.build(prior, "model.prior", latent_dim=self.latent_dim)
        self.likelihood = likelihood if isinstance(likelihood, nn.Module) else \
            LIKELIHOODS.build(likelihood, "model.likelihood", event_shape=self.event_shape)
        self.encoder = encoder if isinstance(encoder, nn.Module) else \
            ENCODERS.build(encoder, "model.encoder", event_shape=self.encoder_event_shape, latent_dim=self.latent_dim)
        self.decoder = decoder if isinstance(decoder, nn.Module) else \
            DECODERS.build(decoder, "model.decoder", event_shape=self.event_shape,
                           latent_dim=self.latent_dim + self.num_conditions, num_params=self.likelihood.num_params)
        self.posterior_module = posterior if isinstance(posterior, nn.Module) else \
            POSTERIORS.build(posterior, "model.posterior", latent_dim=self.latent_dim)
        if hasattr(self.prior, "attach"):  # e.g. the VampPrior, which runs the encoder on its pseudo-inputs
            self.prior.attach(self.encoder, self.event_shape)
        self.check_networks()

    def check_networks(self) -> None:
        """One dry batch of 2 points with 2 particles through the networks: a wrong output shape is
        one ConfigError line that names the network and the expected shape (not a torch error deep
        inside training)."""

        with torch.no_grad():
            c = torch.zeros((2, self.num_conditions), device=self.device) if self.num_conditions else None
            x = self.encoder_input(torch.zeros((2, *self.event_shape), device=self.device), c)
            out = self.encoder(x)
            if not (isinstance(out, (tuple, list)) and len(out) == 2
                    and all(isinstance(t, torch.Tensor) and tuple(t.shape) == (2, self.latent_dim) for t in out)):
                got = tuple(tuple(t.shape) for t in out) if isinstance(out, (tuple, list)) else type(out).__name__
                raise ConfigError(f"model.encoder: for x of shape {tuple(x.shape)} it returns {got}; expected "
                                  f"(loc, log_var), each of shape (2, {self.latent_dim})")
            z = self.decoder_input(torch.zeros((2, 2, self.latent_dim), device=self.device), c)
            out = self.decoder(z)
            want = (2, 2, self.likelihood.num_params, *self.event_shape)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ConfigError(f"model.decoder: for z of shape {tuple(z.shape)} it returns {got}; "
                                  f"expected {want} (particles, points, the likelihood's {self.likelihood.num_params} "
                                  "parameter(s), the data's shape)")

    # -- what the networks condition on (the cvae family's labels; nothing here) ------------
    #: the size of the condition c appended to the networks' inputs (0: none)
    num_conditions = 0
    #: the shape of what the encoder reads (x itself here; x and the condition in ``cvae``)
    encoder_event_shape = property(lambda self: self.event_shape)

    def condition(self, batch) -> Optional[torch.Tensor]:
        """The condition c of each point, ``(M, num_conditions)``, or None: the ``vae`` has none."""
        return None

    def encoder_input(self, x: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        """What the encoder reads for x under condition c (x itself here)."""
        return x

    def decoder_input(self, z: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        """What the decoder reads for codes z ``(..., M, latent_dim)`` under condition c (z itself here)."""
        return z

    # -- the Pyro program ---------------------------------------------------------------
    def model(self, batch, num_data: Optional[int] = None):
        """p(z) p_theta(x|z) for a minibatch (a Batch, or x of shape ``(M, *event_shape)``) out of ``num_data``."""
        batch = as_batch(batch)
        x, c = batch.x, self.condition(batch)
        with self.data_plate(x, num_data):
            z = pyro.sample("z", self.prior((x.shape[0],)))
            pyro.sample("x", self.likelihood(self.decode(z, c, batch), self.event_dim), obs=x)

    def guide(self, batch, num_data: Optional[int] = None):
        """q_phi(z|x) = N(mu(x), diag(exp(zeta(x)))), zeta = log sigma^2 (or the configured
        posterior), under the same plate."""
        batch = as_batch(batch)
        c = self.condition(batch)
        with self.data_plate(batch.x, num_data):  # a subclass's posterior(x) without a condition still serves
            pyro.sample("z", self.posterior(batch.x) if c is None else self.posterior(batch.x, c))

    # -- the closed forms (Model derives the same from traces) ---------------------------------
    @closed_form
    def terms(self, batch, num_particles: int = 1, num_data: Optional[int] = None, kl: bool = True,
              noise: Optional[torch.Tensor] = None, values=None) -> Terms:
        """The ELBO's terms per particle and datapoint with z_l = mu(x) + sigma(x) * eps_l:

        - reconstruction: log p(x | z_l) (``likelihood.log_prob``);
        - ``kl=True``: KL(q(z|x) || p(z)), the prior's closed form
          (1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2) for N(0, I)) where it has one, else
          log q(z_l|x) - log p(z_l);
        - ``kl=False``: log p(z_l) (``prior.log_prob``) and log q(z_l | x), which at
          z = mu + sigma * noise is sum_j -noise_j^2 / 2 - log sigma_j - log(2 pi) / 2: the same value
          and the same total gradient as ``q.log_prob(z)``.

        ``noise`` (shape ``(L, M, latent_dim)``) is the standard normal draw to use; drawn here if
        None. ``values`` is not needed by the closed forms and must be None.
        """
        if values is not None:
            return Model.terms(self, batch, num_particles, num_data, kl, noise, values)
        batch = as_batch(batch)
        c = self.condition(batch)
        loc, log_var = self.encoder(self.encoder_input(batch.x, c))
        return self._terms_at(batch, c, loc, log_var, num_particles, kl, noise)

    def _terms_at(self, batch, c, loc, log_var, num_particles: int, kl: bool, noise=None) -> Terms:
        """:meth:`terms` given the encoder's output ``(loc, log_var)`` for the batch's x."""
        z, noise = reparameterized(loc, log_var, noise, num_particles)  # (L, M, latent_dim)
        reconstruction = self.likelihood.log_prob(self.decode(z, c, batch), batch.x, self.event_dim)  # (L, M)
        if kl and self.prior.has_closed_form_kl:
            return Terms(reconstruction, kl=self.prior.kl_from_normal(loc, log_var).unsqueeze(0))
        log_q = gaussian_log_q(noise, log_var)
        log_prior = self.prior.log_prob(z)
        return Terms(reconstruction, log_q - log_prior if kl else None, log_prior, log_q, kl_exact=False)

    @closed_form
    def importance_sampler(self, batch, num_data: Optional[int] = None):
        """``draw(k, noise=None)``: the log importance weights of k samples z = mu(x) + sigma(x) * eps for
        each point (see :meth:`pyrovae.Model.importance_sampler`), the batch encoded once for every call:
        the same weights as :meth:`terms`, which a test ties to the general trace-derived path."""
        batch = as_batch(batch)
        c = self.condition(batch)
        loc, log_var = self.encoder(self.encoder_input(batch.x, c))
        return lambda k, noise=None: self._terms_at(batch, c, loc, log_var, k, False, noise).log_weights

    def check_data(self, x: torch.Tensor, where: str = "data") -> None:
        """Values outside the likelihood's support are one DataError line that names the fix."""
        self.likelihood.check_data(x, where)

    @property
    def closed_forms_hold(self) -> bool:
        """Whether this class's closed forms (the :func:`closed_form` methods) describe the model:
        not where a subclass overrides the model, the guide or the posterior, nor with a posterior
        whose KL has no closed form (``iaf``); then every term comes from the traces."""
        cls = type(self)
        return (cls.model is VAE.model and cls.guide is VAE.guide and cls.posterior is VAE.posterior
                and has_closed_form_kl(self.posterior_module))

    @property
    def has_plain_vae_model(self) -> bool:
        """Whether the generative model is this class's own, z ~ p(z) and x ~ p_theta(x | z) with no
        condition: what Monte Carlo EM's HMC chains run on (:mod:`pyrovae.infer.hmc`)."""
        return type(self).model is VAE.model and not self.num_conditions

    @closed_form
    def has_closed_form_kl(self, batch=None) -> bool:
        return bool(self.prior.has_closed_form_kl)

    @closed_form
    def noise_shape(self, batch_size: int, num_particles: int) -> Optional[tuple]:
        return (num_particles, batch_size, self.latent_dim)

    # -- plain-tensor helpers (no Pyro effects) --------------------------------------------
    def posterior(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> dist.TorchDistribution:
        """q_phi(z|x) (under condition c) as a distribution with batch shape ``(M,)`` and event
        shape ``(latent_dim,)``."""
        loc, log_var = self.encoder(self.encoder_input(x, c))
        return self.posterior_module(loc, log_var)

    def decode(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, batch=None) -> tuple:
        """The likelihood's parameters for codes z of shape ``(..., latent_dim)`` (under condition
        c): a tuple of ``num_params`` tensors of shape ``(..., *event_shape)``, passed through
        ``likelihood.given(params, batch)`` (the points the codes are for, if any: a likelihood
        may read per-point quantities such as a library size)."""
        out = self.decoder(self.decoder_input(z, c))
        if out.shape[-self.event_dim - 1] == 1:  # a view, whose backward copies nothing (unbind's stacks)
            return self.likelihood.given((out.squeeze(-self.event_dim - 1),), batch)
        return self.likelihood.given(out.unbind(-self.event_dim - 1), batch)

    def likelihood_dist(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, batch=None) -> dist.TorchDistribution:
        """p_theta(x|z) (under condition c, for the points of ``batch`` if given) with the data's event shape."""
        return self.likelihood(self.decode(z, c, batch), self.event_dim)

    @closed_form
    @torch.no_grad()
    def encode(self, batch) -> torch.Tensor:
        """E_q[z | x] = mu(x), ``(M, latent_dim)``."""
        batch = as_batch(batch)
        return self.encoder(self.encoder_input(batch.x, self.condition(batch)))[0]

    @closed_form
    @torch.no_grad()
    def reconstruct(self, batch) -> torch.Tensor:
        """E[x | z = E_q[z | x]]: the decoder's mean at the posterior mean (the encoder's mean
        for the Gaussian posterior)."""
        return self.likelihood.mean(self.decode(self.encode(batch), self.condition(as_batch(batch)), batch))

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True, batch=None, y=None) -> torch.Tensor:
        """Draw z ~ p(z) and return E[x|z] (``mean=True``) or a sample x ~ p(x|z)."""
        if y is not None:
            raise ValueError("y: the vae family reads no labels; the cvae and m2 families draw for a label")
        z = self.prior().sample((num_samples,))
        return self.likelihood.mean(self.decode(z)) if mean else self.likelihood_dist(z).sample()


