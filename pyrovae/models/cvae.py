"""The ``cvae`` family: the conditional VAE of Sohn, Lee & Yan, "Learning Structured Output
Representation using Deep Conditional Generative Models" (2015), conditioned on class labels.

- model:  z_i ~ p(z),  x_i ~ p_theta(x | z_i, y_i);
- guide:  z_i ~ q_phi(z | x_i, y_i),

with the label y_i given (observed, never inferred) and read by both networks as a one-hot
vector c_i: the decoder reads [z, c] (its ``latent_dim`` is the code's plus the number of
classes), the encoder reads x with c appended (flattened, or as constant extra channels for an
encoder that reads images, such as ``conv``). Everything else is the ``vae`` family's: any
prior, likelihood, networks and posterior, and its closed-form terms (estimator B with a
Gaussian prior). The ELBO bounds the conditional log-likelihood log p(x | y), which is what
evaluation reports.

Sampling takes the labels to draw for: ``model.sample(n, y=3)`` draws n images of class 3
(``pyrovae sample RUN --label 3``).
"""

import math
from typing import Optional, Sequence, Union

import torch
from torch import nn

from pyrovae.data.batch import as_batch
from pyrovae.models.base import labels_for
from pyrovae.models.registry import MODELS
from pyrovae.models.vae import VAE
from pyrovae.parts.likelihoods import Likelihood
from pyrovae.parts.nets import ENCODERS
from pyrovae.parts.priors import Prior
from pyrovae.registry import Spec


def one_hot(y: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    """Labels ``(M,)`` (integers in [0, num_classes)) as one-hot rows ``(M, num_classes)``."""
    return torch.nn.functional.one_hot(y.long(), num_classes).to(dtype)


def _reads_images(encoder) -> bool:
    if isinstance(encoder, nn.Module):
        return bool(getattr(encoder, "reads_images", False))
    name = encoder if isinstance(encoder, str) else encoder.get("name") if hasattr(encoder, "get") else None
    return isinstance(name, str) and name in ENCODERS and bool(getattr(ENCODERS.get(name), "reads_images", False))


@MODELS.register("cvae")
class CVAE(VAE):
    """A conditional VAE: p(z) p_theta(x | z, y) with q_phi(z | x, y), y given.

    :param tuple event_shape: the shape of one data point.
    :param int num_classes: the number of classes (from the data's labels).
    :param int latent_dim: the dimension of z.
    :param prior: as for :class:`~pyrovae.VAE`, and so are ``likelihood``, ``encoder``, ``decoder`` and
        ``posterior``; a network built by name gets the condition's size added to its input (the
        decoder's ``latent_dim`` is ``latent_dim + num_classes``); a module passed in must read
        :attr:`encoder_event_shape` and ``latent_dim + num_classes`` inputs.
    """

    def __init__(self, event_shape: Sequence[int], num_classes: int, latent_dim: int = 2,
                 prior: Union[Spec, Prior] = "standard_normal",
                 likelihood: Union[Spec, Likelihood] = "bernoulli",
                 encoder: Union[Spec, nn.Module] = "mlp", decoder: Union[Spec, nn.Module] = "mlp",
                 posterior: Union[Spec, nn.Module] = "gaussian", name: str = ""):
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        # read by the network builders inside VAE.__init__, so set first
        self.num_classes = int(num_classes)
        self.label_planes = _reads_images(encoder)
        super().__init__(event_shape, latent_dim, prior, likelihood, encoder, decoder, posterior, name)

    @property
    def num_conditions(self) -> int:
        return self.num_classes

    @property
    def encoder_event_shape(self) -> tuple:
        """x with the one-hot label appended: ``(D + C,)`` flattened, or ``(channels + C, H, W)``
        for an encoder that reads images."""
        if self.label_planes:
            shape = self.event_shape if len(self.event_shape) == 3 else (1, *self.event_shape)
            return (shape[0] + self.num_classes, *shape[1:])
        return (math.prod(self.event_shape) + self.num_classes,)

    def condition(self, batch) -> torch.Tensor:
        batch = as_batch(batch)
        if batch.y is None:
            raise ValueError("the cvae family needs the labels y of every point (a Batch with y)")
        return one_hot(batch.y, self.num_classes, batch.x.dtype)

    def encoder_input(self, x: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        m = x.shape[0]
        if self.label_planes:
            image = x.reshape(m, -1, *self.encoder_event_shape[1:])
            planes = c[:, :, None, None].expand(m, self.num_classes, *image.shape[2:])
            return torch.cat([image, planes], 1)
        return torch.cat([x.reshape(m, -1), c], -1)

    def decoder_input(self, z: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        return torch.cat([z, c.expand(*z.shape[:-1], c.shape[-1])], -1)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True, batch=None, y=None) -> torch.Tensor:
        """Draw z ~ p(z) and return E[x | z, y] (``mean=True``) or a sample x ~ p(x | z, y), for
        labels ``y`` (one int, or ``num_samples`` of them; default the classes in turn) or
        those of ``batch``."""
        if batch is not None and y is None:
            y = as_batch(batch).y
        y = labels_for(num_samples, y, self.num_classes, self.device)
        z = self.prior().sample((num_samples,))
        c = one_hot(y, self.num_classes, z.dtype)
        return self.likelihood.mean(self.decode(z, c)) if mean else self.likelihood_dist(z, c).sample()
