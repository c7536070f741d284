"""Pyro's semi-supervised VAE (model M2 of Kingma, Rezende, Mohamed & Welling 2014), as Pyro's
``examples/vae/ss_vae_M2.py`` writes it, ported to a pyrovae family (``ss_vae``).

The networks, ``model`` and ``guide`` are Pyro's, with these changes only:

- the base class is :class:`pyrovae.Model`, and the class declares ``labels = "per_minibatch"``:
  like Pyro's example, it takes minibatches that are all labelled (``batch.y`` set) or all
  unlabelled (``batch.y`` None), never mixed. pyrovae then draws the two kinds in a fixed
  seeded proportion (:func:`pyrovae.data.sampling.split_plan`);
- ``model`` and ``guide`` take ``(batch, num_data=None)``: ``xs`` is ``batch.x`` flattened, and
  ``ys`` the one-hot ``batch.y`` (None on an unlabelled minibatch);
- the plate is ``self.data_plate(batch, num_data)`` (Pyro's ``pyro.plate("data")``), so that a
  minibatch of M of the N points is scaled by N/M;
- Pyro's auxiliary loss, a second SVI on ``model_classify`` there, is a site of the model here:
  ``y_aux``, observed on labelled minibatches only, scaled by ``aux_loss_multiplier`` (Pyro's 46),
  so that q(y | x) learns from the labels directly (Kingma et al. 2014, eq. 9).

Pyro's ``config_enumerate(ss_vae.guide)``, in its ``main()``, needs no counterpart: pyrovae marks
a guide's discrete sites so itself, and an unlabelled point's ELBO sums over the ten classes
instead of sampling one. Pyro's ``classifier(xs)`` is not needed: pyrovae classifies with the
guide's q(y | x) at the label site ``y``, which it finds from the traces
(:meth:`pyrovae.Model.label_site`), and scores the test points without their labels (log p(x)).
Train it on MNIST with 3000 labels with

    pyrovae train examples/configs/ss_vae_mnist.toml
"""

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
import torch.nn.functional as F

import pyrovae


class MLP(nn.Module):
    """Pyro's example MLP (``utils/custom_mlp.py``), shortened: a list of inputs is concatenated
    after broadcasting (an enumerated label carries a dimension on the left), Softplus hidden
    layers, and one output per head with its own activation."""

    def __init__(self, sizes, heads, activations):
        super().__init__()
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.Softplus()]
        self.hidden = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(sizes[-1], size) for size in heads)
        self.activations = activations

    def forward(self, inputs):
        if isinstance(inputs, (list, tuple)):
            shape = torch.broadcast_shapes(*(t.shape[:-1] for t in inputs))
            inputs = torch.cat([t.expand(*shape, t.shape[-1]) for t in inputs], -1)
        h = self.hidden(inputs)
        outputs = [activation(head(h)) for head, activation in zip(self.heads, self.activations)]
        return outputs[0] if len(outputs) == 1 else outputs


def clipped(fn, epsilon):
    """Pyro's ClippedSoftmax and ClippedSigmoid: the probabilities kept in [eps, 1 - eps]."""
    return lambda v: fn(v).clamp(epsilon, 1 - epsilon)


@pyrovae.MODELS.register("ss_vae")
class SSVAE(pyrovae.Model):
    """The semi-supervised VAE of Pyro's example:

    - model: z ~ N(0, I), y ~ Cat(1/C) (observed when labelled), x ~ Bernoulli(decoder(z, y));
    - guide: y ~ q(y | x) = Cat(encoder_y(x)) (unlabelled only, summed out), z ~ N(encoder_z(x, y)).

    :param int num_classes: C, from the data's labels.
    :param int z_dim: the dimension of z.
    :param list hidden_layers: the hidden sizes of every network.
    :param float aux_loss_multiplier: the weight of log q(y | x) on a labelled point (Pyro's
        ``--aux-loss-multiplier``, 46 in its example); 0 leaves the auxiliary loss out.
    """

    labels = "per_minibatch"

    def __init__(self, event_shape, num_classes: int, z_dim: int = 50, hidden_layers=(500,),
                 epsilon_scale: float = 1e-7, aux_loss_multiplier: float = 46.0):
        super().__init__(event_shape)
        self.output_size = num_classes
        self.input_size = math.prod(event_shape)
        self.z_dim = z_dim
        self.aux_loss_multiplier = aux_loss_multiplier
        hidden = list(hidden_layers)
        self.encoder_y = MLP([self.input_size] + hidden, [self.output_size],
                             [clipped(lambda v: F.softmax(v, -1), epsilon_scale)])
        self.encoder_z = MLP([self.input_size + self.output_size] + hidden, [z_dim, z_dim], [lambda v: v, torch.exp])
        self.decoder = MLP([z_dim + self.output_size] + hidden, [self.input_size],
                           [clipped(torch.sigmoid, epsilon_scale)])

    def model(self, batch, num_data=None):
        xs = batch.x.reshape(len(batch), -1)
        ys = None if batch.y is None else F.one_hot(batch.y, self.output_size).to(xs.dtype)
        labelled = ys is not None
        batch_size = xs.size(0)
        with self.data_plate(batch, num_data):
            # sample the handwriting style from the constant prior distribution
            prior_loc = xs.new_zeros([batch_size, self.z_dim])
            prior_scale = xs.new_ones([batch_size, self.z_dim])
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            # the digit: observed when labelled, else summed out with the guide's q(y | x)
            alpha_prior = xs.new_ones([batch_size, self.output_size]) / (1.0 * self.output_size)
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            # score the image against p(x | y, z) = Bernoulli(decoder(y, z))
            loc = self.decoder([zs, ys])
            pyro.sample("x", dist.Bernoulli(loc, validate_args=False).to_event(1), obs=xs)
            # Pyro's model_classify: the auxiliary loss on labelled points
            if labelled and self.aux_loss_multiplier:
                alpha = self.encoder_y(xs)
                with pyro.poutine.scale(scale=self.aux_loss_multiplier):
                    pyro.sample("y_aux", dist.OneHotCategorical(alpha), obs=ys)

    def guide(self, batch, num_data=None):
        xs = batch.x.reshape(len(batch), -1)
        ys = None if batch.y is None else F.one_hot(batch.y, self.output_size).to(xs.dtype)
        with self.data_plate(batch, num_data):
            # if the digit is not supervised, q(y | x) = categorical(alpha(x))
            if ys is None:
                alpha = self.encoder_y(xs)
                ys = pyro.sample("y", dist.OneHotCategorical(alpha))
            # the handwriting style, q(z | x, y) = normal(loc(x, y), scale(x, y))
            loc, scale = self.encoder_z([xs, ys])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
