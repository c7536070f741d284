"""A Gaussian-mixture VAE: a discrete cluster y summed out, with no guide written.

    y ~ Categorical(1/K),   z | y ~ N(mu_y, I),   x | z ~ Bernoulli(decoder(z))

(Dilokthanakul et al. 2016; Jiang et al. 2017, "VaDE"). The cluster site is marked
``infer={"enumerate": "parallel"}``: pyrovae sums it out of every datapoint's terms, as Pyro's
``TraceEnum_ELBO`` does, so the ELBO is E_q(z|x)[log sum_y p(y) p(z | y) p(x | z) - log q(z | x)].
The family writes no guide: it gets an :class:`~pyrovae.AmortizedGuide` (a Normal q(z | x) from
an MLP encoder). :meth:`GMVAE.cluster` assigns each point its most probable cluster,
argmax_y p(y | z) at z = E_q[z | x]. Train it with

    pyrovae train examples/configs/gmvae_digits.toml
"""

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import pyrovae


@pyrovae.MODELS.register("gmvae")
class GMVAE(pyrovae.Model):
    """:param int clusters: K. :param int latent_dim: z's size. :param int hidden: the decoder's width.
    :param float spread: the standard deviation of the cluster means' initial draw."""

    def __init__(self, event_shape, clusters: int = 10, latent_dim: int = 8, hidden: int = 256,
                 spread: float = 2.0):
        super().__init__(event_shape)
        self.clusters, self.latent_dim = clusters, latent_dim
        self.means = nn.Parameter(spread * torch.randn(clusters, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(),
                                     nn.Linear(hidden, math.prod(event_shape)))

    def model(self, batch, num_data=None):
        x = batch.x.reshape(len(batch), -1)
        with self.data_plate(batch, num_data):
            y = pyro.sample("y", dist.Categorical(logits=x.new_zeros(self.clusters)),
                            infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(self.means[y], 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    @torch.no_grad()
    def cluster(self, batch) -> torch.Tensor:
        """argmax_y p(y | z) at z = E_q[z | x], one cluster per point."""
        z = self.encode(batch)
        return dist.Normal(self.means, 1.0).to_event(1).log_prob(z.unsqueeze(-2)).argmax(-1)
