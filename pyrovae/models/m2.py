"""The ``m2`` family: the semi-supervised generative model M2 of Kingma, Rezende, Mohamed &
Welling, "Semi-supervised Learning with Deep Generative Models" (NeurIPS 2014).

- model:  y ~ Cat(1/C),  z ~ p(z),  x ~ p_theta(x | y, z);
- guide:  y ~ q_phi(y | x) = Cat(pi_phi(x)) (the classifier),  z ~ q_phi(z | x, y) (the encoder).

For a labelled point (x, y) the ELBO is (the paper's eq. 6)

    -L(x, y) = E_q(z|x,y)[log p(x | y, z) + log p(y) + log p(z) - log q(z | x, y)] <= log p(x, y);

for an unlabelled point y is summed out exactly (eq. 7):

    -U(x) = sum_y q(y | x) (-L(x, y)) + H(q(y | x)) <= log p(x).

Training maximises the sum of both over the data plus alpha times the classifier's log-likelihood
of the labels (eq. 9), so that q(y | x) also learns from the labelled points directly:

    J^alpha = sum_labelled -L(x, y) + sum_unlabelled -U(x) + alpha * E_labelled[log q(y | x)],

with the paper's alpha = 0.1 N; per labelled point that is 0.1 N / N_labelled, and the family
option ``alpha`` is the factor (0.1). A minibatch mixes labelled and unlabelled points as the
data has them (``data.labeled = K`` keeps K labels); :meth:`M2.prepare` counts N_labelled. With
rare labels, ``train.labeled_per_batch`` puts k labelled points in every minibatch and
``train.labeled_weight = "balanced"`` makes the labelled data weigh as much as the unlabelled
(the loop weighs each point; see :func:`pyrovae.data.sampling.epoch_plan`).

Two implementations of the same sum, tied by a test:

- :meth:`M2.terms`, pyrovae's: the closed-form sum over the classes, in one batched pass of the
  encoder and decoder over (point, class) rows: every class for an unlabelled point, the label
  for a labelled one. Its importance weights sum y out inside each weight,
  log sum_y p(x, y, z_y) / q(z_y | x, y), so the IWAE bound and the test NLL estimate log p(x).
- :meth:`M2.model` and :meth:`M2.guide`, a Pyro program for plain SVI with
  ``TraceEnum_ELBO`` (y marked for parallel enumeration in the guide), as in Pyro's
  ``examples/vae/ss_vae_M2.py``: a minibatch there is either all labelled or all unlabelled.

Evaluation scores the test points without their labels (log p(x), as the paper's NLL), and
:meth:`M2.classify` gives ``test_accuracy``: argmax_y q(y | x).
"""

import math
from typing import Optional, Sequence, Union

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyrovae.data.batch import Batch, as_batch
from pyrovae.models.cvae import CVAE, one_hot
from pyrovae.models.registry import MODELS
from pyrovae.models.terms import Terms
from pyrovae.parts.likelihoods import Likelihood
from pyrovae.parts.nets import CLASSIFIERS
from pyrovae.parts.posteriors import gaussian_log_q, has_closed_form_kl, reparameterized
from pyrovae.parts.priors import Prior
from pyrovae.registry import Spec


@MODELS.register("m2")
class M2(CVAE):
    """The semi-supervised model M2 (see the module docstring).

    :param tuple event_shape: the shape of one data point.
    :param int num_classes: the number of classes (from the data's labels).
    :param int latent_dim: the dimension of z.
    :param prior: as for :class:`~pyrovae.CVAE`, and so are ``likelihood``, ``encoder``, ``decoder`` and
        ``posterior``: the encoder reads [x, y], the decoder [z, y].
    :param classifier: q(y | x): a registered classifier spec (``"mlp"``,
        ``{"name": "mlp", "hidden": [500]}``) or a module mapping x to ``(M, num_classes)`` logits.
    :param float alpha: the weight of the classification term as a fraction of N (the paper's
        0.1): each labelled point adds alpha * N / N_labelled * log q(y | x) to the objective.
    """

    config_defaults = {**CVAE.config_defaults, "classifier": {"name": "mlp", "hidden": [256], "activation": "relu"}}
    #: with rare labels and uniform minibatches, a labelled point is seen once an epoch and weighs 1 in N:
    #: the classifier then learns little from the labels (Kingma et al. 2014 weigh them by alpha * N)
    labeled_training = {"labeled_per_batch": 50, "labeled_weight": "balanced"}
    #: a dynamically binarized 8x8 digit is a fresh random image at every step and one random draw at
    #: test: q(y | x) then classifies noise (on the digits with 100 labels, 82.8 % against 87.6 % with
    #: fixed thresholded images, the mean of seeds 0-5; see docs/training.md)
    binarize_under_budget = "threshold"

    @classmethod
    def labels_under(cls, engine: str) -> str:
        """Per point under the torch engine (:meth:`terms` mixes labelled and unlabelled points);
        per minibatch under Pyro's, whose program (:meth:`model`, :meth:`guide`) takes all-labelled
        and all-unlabelled minibatches, as Pyro's ss_vae_M2 example does."""
        return "per_minibatch" if engine == "pyro" else "per_point"

    def __init__(self, event_shape: Sequence[int], num_classes: int, latent_dim: int = 10,
                 prior: Union[Spec, Prior] = "standard_normal",
                 likelihood: Union[Spec, Likelihood] = "bernoulli",
                 encoder: Union[Spec, nn.Module] = "mlp", decoder: Union[Spec, nn.Module] = "mlp",
                 classifier: Union[Spec, nn.Module] = "mlp", posterior: Union[Spec, nn.Module] = "gaussian",
                 alpha: float = 0.1, name: str = ""):
        super().__init__(event_shape, num_classes, latent_dim, prior, likelihood, encoder, decoder, posterior, name)
        if not (alpha >= 0 and math.isfinite(alpha)):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.classifier = classifier if isinstance(classifier, nn.Module) else \
            CLASSIFIERS.build(classifier, "model.classifier", event_shape=self.event_shape,
                              num_classes=self.num_classes)
        # N_labelled, counted from the training data by prepare() (0: every training label is used)
        self.register_buffer("num_labeled", torch.zeros((), dtype=torch.float64))

    def prepare(self, data) -> None:
        """Count the training labels the model may use (``data.labeled``; all of them if unset)."""
        if data.train_y is None:
            raise ValueError("the m2 family needs labelled data")
        n = data.labeled.sum() if data.labeled is not None else len(data.train_y)
        self.num_labeled.fill_(float(n))

    # -- labels ------------------------------------------------------------------------------
    def labeled_mask(self, batch: Batch) -> torch.Tensor:
        """Which points of the batch come with a usable label, ``(M,)`` bool."""
        m = batch.x.shape[0]
        if batch.y is None:
            return torch.zeros(m, dtype=torch.bool, device=batch.x.device)
        if batch.labeled is None:
            return torch.ones(m, dtype=torch.bool, device=batch.x.device)
        return batch.labeled.bool()

    def alpha_per_label(self, num_data: int) -> float:
        """The weight of log q(y | x) for one labelled point: alpha * N / N_labelled."""
        return self.alpha * num_data / (float(self.num_labeled) or num_data)

    def scoring_batch(self, batch) -> Batch:
        """Test points are scored without their labels: the ELBO and NLL bound log p(x)."""
        return Batch(as_batch(batch).x)

    @torch.no_grad()
    def classify(self, batch) -> torch.Tensor:
        """argmax_y q(y | x), ``(M,)``."""
        return self.classifier(as_batch(batch).x).argmax(-1)

    # -- the closed-form sum over the classes --------------------------------------------------
    def terms(self, batch, num_particles: int = 1, num_data: Optional[int] = None, kl: bool = True,
              noise: Optional[torch.Tensor] = None, values=None) -> Terms:
        """The terms per particle and datapoint with y summed out in closed form for unlabelled
        points (see the module docstring): each term is the q(y | x)-weighted sum over the
        classes (the label's alone for a labelled point), plus log p(y) = -log C in
        ``log_prior``, sum_y q log q in ``log_q`` and KL(q(y | x) || p(y)) in ``kl``.
        ``noise`` ``(L, M, latent_dim)`` is shared by a point's classes (common random numbers)."""
        if values is not None:
            raise ValueError("the m2 family's terms take no fixed values")
        batch = as_batch(batch)
        x, m, classes = batch.x, batch.x.shape[0], self.num_classes
        n = num_data or m
        labeled_mask = self.labeled_mask(batch)
        labels = batch.y.long() if batch.y is not None else torch.zeros(m, dtype=torch.long, device=x.device)
        unlabeled_index, labeled_index = (~labeled_mask).nonzero().squeeze(-1), labeled_mask.nonzero().squeeze(-1)
        log_qy = torch.log_softmax(self.classifier(x), -1)  # (M, C)
        # rows: (point, class) for every class of an unlabelled point, then (point, label)
        owner = torch.cat([unlabeled_index.repeat_interleave(classes), labeled_index])
        num_unlabeled = len(unlabeled_index)
        row_class = torch.cat([torch.arange(classes, device=x.device).repeat(num_unlabeled), labels[labeled_index]])
        log_qy_unlabeled = log_qy[unlabeled_index]
        weight = torch.cat([log_qy_unlabeled.exp().reshape(-1), x.new_ones(len(labeled_index))])  # q(y | x), or 1
        x_rows, c = x[owner], one_hot(row_class, classes, x.dtype)
        loc, log_var = self.encoder(self.encoder_input(x_rows, c))
        gaussian = has_closed_form_kl(self.posterior_module)
        if gaussian:
            z, noise = reparameterized(loc, log_var, None if noise is None else noise[:, owner], num_particles)
            log_q_rows = gaussian_log_q(noise, log_var)
        else:
            q = self.posterior_module(loc, log_var)
            z = q.rsample((num_particles,))
            log_q_rows = q.log_prob(z)
        reconstruction_rows = self.likelihood.log_prob(self.decode(z, c, x_rows), x_rows, self.event_dim)  # (L, R)
        log_prior_rows = self.prior.log_prob(z)

        def per_point(rows: torch.Tensor) -> torch.Tensor:  # the weighted sum of each point's rows
            return rows.new_zeros((*rows.shape[:-1], m)).index_add(-1, owner, rows * weight)

        log_c = math.log(classes)
        q_log_q = torch.zeros_like(log_qy[:, 0]).index_add(
            0, unlabeled_index, (weight[: num_unlabeled * classes].reshape(-1, classes) * log_qy_unlabeled).sum(-1))
        reconstruction = per_point(reconstruction_rows)
        log_prior = per_point(log_prior_rows) - log_c
        log_q = per_point(log_q_rows) + q_log_q
        exact = gaussian and self.prior.has_closed_form_kl
        if kl and exact:
            kl_total = per_point(self.prior.kl_from_normal(loc, log_var).unsqueeze(0)) + q_log_q + log_c
        else:
            kl_total = log_q - log_prior if kl else None
        # log sum_y p(x, y, z_y) / q(z_y | x, y): the classes summed inside each importance weight
        elbo_rows = reconstruction_rows + log_prior_rows - log_q_rows - log_c
        log_w = elbo_rows.new_empty((num_particles, m))
        log_w[:, unlabeled_index] = (elbo_rows[:, : num_unlabeled * classes]
                                     .reshape(num_particles, num_unlabeled, classes).logsumexp(-1))
        log_w[:, labeled_index] = elbo_rows[:, num_unlabeled * classes:]
        auxiliary = None
        if len(labeled_index) and self.alpha > 0:
            log_q_label = log_qy[labeled_index].gather(-1, labels[labeled_index].unsqueeze(-1)).squeeze(-1)
            auxiliary = torch.zeros_like(log_qy[:, 0]).index_add(0, labeled_index,
                                                                 self.alpha_per_label(n) * log_q_label)
        return Terms(reconstruction, kl_total, log_prior, log_q, kl_exact=exact, auxiliary=auxiliary,
                     importance_log_weights=log_w)

    def has_closed_form_kl(self, batch=None) -> bool:
        return bool(has_closed_form_kl(self.posterior_module) and has_closed_form_kl(self.prior))

    def noise_shape(self, batch_size: int, num_particles: int) -> Optional[tuple]:
        gaussian = has_closed_form_kl(self.posterior_module)
        return (num_particles, batch_size, self.latent_dim) if gaussian else None

    # -- the Pyro program (plain SVI with TraceEnum_ELBO) ----------------------------------------
    def _all_or_none_labelled(self, batch: Batch) -> bool:
        labelled = self.labeled_mask(batch)
        if bool(labelled.all()):
            return True
        if bool(labelled.any()):
            raise ValueError("the m2 family's Pyro program takes a minibatch that is all labelled or all "
                             "unlabelled (as Pyro's ss_vae_M2 example); pyrovae's own loop mixes them")
        return False

    def _posterior_given(self, x: torch.Tensor, y: torch.Tensor) -> dist.TorchDistribution:
        """q(z | x, y) for labels y of shape ``(..., M)`` (an enumerated y broadcasts over the data)."""
        if y.shape == x.shape[:1]:
            return self.posterior(x, one_hot(y, self.num_classes, x.dtype))
        loc, log_var = self._encode_every_class(x)
        pick = one_hot(y, self.num_classes, x.dtype).unsqueeze(-1)  # (..., M, C, 1)
        return self.posterior_module((pick * loc.movedim(0, -2)).sum(-2), (pick * log_var.movedim(0, -2)).sum(-2))

    def _encode_every_class(self, x: torch.Tensor):
        """The encoder's ``(loc, log_var)`` for every point under every class, each ``(C, M, latent_dim)``."""
        rows = x.repeat(self.num_classes, *([1] * (x.dim() - 1)))  # (C * M, ...), class-major
        c = one_hot(torch.arange(self.num_classes, device=x.device).repeat_interleave(x.shape[0]),
                    self.num_classes, x.dtype)
        return tuple(t.unflatten(0, (self.num_classes, x.shape[0])) for t in self.encoder(self.encoder_input(rows, c)))

    def model(self, batch, num_data: Optional[int] = None):
        """p(y) p(z) p_theta(x | y, z), y observed for a labelled minibatch, plus the
        classification term alpha * N / N_labelled * log q(y | x) as the observed site ``y_aux``."""
        batch = as_batch(batch)
        x, m = batch.x, batch.x.shape[0]
        labelled = self._all_or_none_labelled(batch)
        with self.data_plate(x, num_data):
            z = pyro.sample("z", self.prior((m,)))
            prior_y = dist.Categorical(logits=x.new_zeros(self.num_classes)).expand([m])
            y = pyro.sample("y", prior_y, obs=batch.y.long() if labelled else None)
            c = one_hot(y, self.num_classes, x.dtype)
            pyro.sample("x", self.likelihood(self.decode(z, c, batch), self.event_dim), obs=x)
            if labelled and self.alpha > 0:
                with poutine.scale(scale=self.alpha_per_label(num_data or m)):
                    pyro.sample("y_aux", dist.Categorical(logits=self.classifier(x)), obs=batch.y.long())

    def guide(self, batch, num_data: Optional[int] = None):
        """q(y | x), enumerated in parallel for an unlabelled minibatch, then q(z | x, y)."""
        batch = as_batch(batch)
        x = batch.x
        labelled = self._all_or_none_labelled(batch)
        with self.data_plate(x, num_data):
            if labelled:
                y = batch.y.long()
            else:
                y = pyro.sample("y", dist.Categorical(logits=self.classifier(x)), infer={"enumerate": "parallel"})
            pyro.sample("z", self._posterior_given(x, y))

    # -- what evaluation and the figures use -------------------------------------------------------
    @torch.no_grad()
    def encode(self, batch) -> torch.Tensor:
        """E_q[z | x] = sum_y q(y | x) E_q[z | x, y] (the labels withheld), ``(M, latent_dim)``."""
        x = as_batch(batch).x
        q_y = torch.softmax(self.classifier(x), -1)  # (M, C)
        return (q_y.T.unsqueeze(-1) * self._encode_every_class(x)[0]).sum(0)

    @torch.no_grad()
    def reconstruct(self, batch) -> torch.Tensor:
        """E[x | y, z] at y = argmax q(y | x) and z = E_q[z | x, y]."""
        x = as_batch(batch).x
        c = one_hot(self.classify(batch), self.num_classes, x.dtype)
        loc = self.encoder(self.encoder_input(x, c))[0]
        return self.likelihood.mean(self.decode(loc, c, x))
