"""Pyro's own VAE (``examples/vae/vae.py`` in the Pyro repository), pasted into a pyrovae family.

The encoder, the decoder, ``model`` and ``guide`` are Pyro's, with three changes only:

- the base class is :class:`pyrovae.Model` (registered as the family ``pyro_vae``);
- ``model`` and ``guide`` take ``(batch, num_data=None)`` (``x = batch.x``);
- the plate is ``self.data_plate(batch, num_data)``: a minibatch of M of the N points is
  scaled by N/M (Pyro's example writes ``pyro.plate("data", x.shape[0])``, which pyrovae refuses
  at build: that plate does not subsample, so every minibatch would count M/N too little).

The data size is the one ``event_shape`` gives (784 in Pyro's example, for MNIST). The observed
site is called ``obs``, not ``x``: pyrovae finds it from the trace. Train it with

    pyrovae train examples/configs/pyro_vae_digits.toml
"""

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn

import pyrovae


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim, data_dim):
        super().__init__()
        # setup the two linear transformations used
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, data_dim)
        # setup the non-linearities
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        # define the forward computation on the latent z
        # first compute the hidden units
        hidden = self.softplus(self.fc1(z))
        # return the parameter for the output Bernoulli
        # each is of size batch_size x 784
        loc_img = self.sigmoid(self.fc21(hidden))
        return loc_img


class Encoder(nn.Module):
    def __init__(self, z_dim, hidden_dim, data_dim):
        super().__init__()
        self.data_dim = data_dim
        # setup the three linear transformations used
        self.fc1 = nn.Linear(data_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        # setup the non-linearities
        self.softplus = nn.Softplus()

    def forward(self, x):
        # define the forward computation on the image x
        # first shape the mini-batch to have pixels in the rightmost dimension
        x = x.reshape(-1, self.data_dim)
        # then compute the hidden units
        hidden = self.softplus(self.fc1(x))
        # then return a mean vector and a (positive) square root covariance
        # each of size batch_size x z_dim
        z_loc = self.fc21(hidden)
        z_scale = torch.exp(self.fc22(hidden))
        return z_loc, z_scale


@pyrovae.MODELS.register("pyro_vae")
class VAE(pyrovae.Model):
    def __init__(self, event_shape, z_dim=50, hidden_dim=400):
        super().__init__(event_shape)
        data_dim = math.prod(event_shape)
        # create the encoder and decoder networks
        self.encoder = Encoder(z_dim, hidden_dim, data_dim)
        self.decoder = Decoder(z_dim, hidden_dim, data_dim)
        self.z_dim = z_dim
        self.data_dim = data_dim

    # define the model p(x|z)p(z)
    def model(self, batch, num_data=None):
        x = batch.x
        # register PyTorch module `decoder` with Pyro
        pyro.module("decoder", self.decoder)
        with self.data_plate(batch, num_data):
            # setup hyperparameters for prior p(z)
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            # sample from prior (value will be sampled by guide when computing the ELBO)
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            # decode the latent code z
            loc_img = self.decoder(z)
            # score against actual images (with relaxed Bernoulli values)
            pyro.sample(
                "obs",
                dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                obs=x.reshape(-1, self.data_dim),
            )
            # return the loc so we can visualize it later
            return loc_img

    # define the guide (i.e. variational distribution) q(z|x)
    def guide(self, batch, num_data=None):
        x = batch.x
        # register PyTorch module `encoder` with Pyro
        pyro.module("encoder", self.encoder)
        with self.data_plate(batch, num_data):
            # use the encoder to get the parameters used to define q(z|x)
            z_loc, z_scale = self.encoder(x)
            # sample the latent code z
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
