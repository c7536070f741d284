"""Pyro's conditional VAE (``examples/cvae`` in the Pyro repository: Sohn, Lee & Yan 2015,
"Learning Structured Output Representation using Deep Conditional Generative Models"), ported to
a pyrovae family (``pyro_cvae``): from one quadrant of an image, predict the other three.

The networks, ``model`` and ``guide`` are Pyro's, with these changes only:

- the base class is :class:`pyrovae.Model`, and ``model`` and ``guide`` take ``(batch,
  num_data=None)``. Pyro's data loader hands the model ``xs`` (the input quadrant, the rest
  -1) and ``ys`` (the image, the input quadrant -1); here :func:`quadrants` makes both from
  ``batch.x``, so the family trains on any image data set pyrovae reads;
- the plate is ``self.data_plate(batch, num_data)`` (Pyro's ``pyro.plate("data")``), scaled by N/M;
- the image size comes from ``event_shape`` (784 in Pyro's example);
- Pyro pre-trains the baseline network with a loop of its own and freezes it (``torch.no_grad``);
  here it trains with the rest, by the same ELBO.

The model observes only the pixels it predicts (``loc[mask]``, a boolean mask over (M, 784)): it
runs on the batch's own shapes, as under Pyro's ``Trace_ELBO`` with one particle. It reads its input
quadrant, so it cannot be drawn from its prior alone: ``pyrovae sample`` and ``samples.png`` draw
it given test points (their input quadrants), and show what the model returns, the whole image's
``loc``. Train it with

    pyrovae train examples/configs/pyro_cvae_digits.toml
"""

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn

import pyrovae


def quadrants(images, num_quadrant_inputs=1):
    """Pyro's ``MaskImages``: ``(xs, ys)``, the image with all but its first ``num_quadrant_inputs``
    quadrants (top left, top right, bottom left) set to -1, and the image with those input
    quadrants set to -1."""
    h, w = images.shape[-2] // 2, images.shape[-1] // 2
    corners = [(slice(0, h), slice(0, w)), (slice(0, h), slice(w, None)), (slice(h, None), slice(0, w)),
               (slice(h, None), slice(w, None))]
    given = torch.zeros(images.shape[-2:], dtype=torch.bool, device=images.device)
    for rows, cols in corners[:num_quadrant_inputs]:
        given[rows, cols] = True
    xs = torch.where(given, images, torch.full_like(images, -1.0))
    ys = torch.where(given, torch.full_like(images, -1.0), images)
    return xs, ys


class Encoder(nn.Module):
    def __init__(self, z_dim, hidden_1, hidden_2, size):
        super().__init__()
        self.size = size
        self.fc1 = nn.Linear(size, hidden_1)
        self.fc2 = nn.Linear(hidden_1, hidden_2)
        self.fc31 = nn.Linear(hidden_2, z_dim)
        self.fc32 = nn.Linear(hidden_2, z_dim)
        self.relu = nn.ReLU()

    def forward(self, x, y):
        # put x and y together in the same image for simplification
        xc = x.clone()
        xc[x == -1] = y[x == -1]
        xc = xc.view(-1, self.size)
        # then compute the hidden units
        hidden = self.relu(self.fc1(xc))
        hidden = self.relu(self.fc2(hidden))
        # then return a mean vector and a (positive) square root covariance
        # each of size batch_size x z_dim
        z_loc = self.fc31(hidden)
        z_scale = torch.exp(self.fc32(hidden))
        return z_loc, z_scale


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_1, hidden_2, size):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_1)
        self.fc2 = nn.Linear(hidden_1, hidden_2)
        self.fc3 = nn.Linear(hidden_2, size)
        self.relu = nn.ReLU()

    def forward(self, z):
        y = self.relu(self.fc1(z))
        y = self.relu(self.fc2(y))
        y = torch.sigmoid(self.fc3(y))
        return y


class BaselineNet(nn.Module):
    def __init__(self, hidden_1, hidden_2, size):
        super().__init__()
        self.size = size
        self.fc1 = nn.Linear(size, hidden_1)
        self.fc2 = nn.Linear(hidden_1, hidden_2)
        self.fc3 = nn.Linear(hidden_2, size)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = x.view(-1, self.size)
        hidden = self.relu(self.fc1(x))
        hidden = self.relu(self.fc2(hidden))
        y = torch.sigmoid(self.fc3(hidden))
        return y


@pyrovae.MODELS.register("pyro_cvae")
class CVAE(pyrovae.Model):
    """Pyro's CVAE: the prior p(z | x) and the recognition network q(z | x, y) share a shape,
    and p(y | x, z) is Bernoulli over the pixels not given (x: the input quadrant, y: the rest)."""

    def __init__(self, event_shape, z_dim: int = 2, hidden_1: int = 500, hidden_2: int = 500,
                 num_quadrant_inputs: int = 1):
        super().__init__(event_shape)
        self.size = math.prod(event_shape)
        self.num_quadrant_inputs = num_quadrant_inputs
        self.baseline_net = BaselineNet(hidden_1, hidden_2, self.size)
        self.prior_net = Encoder(z_dim, hidden_1, hidden_2, self.size)
        self.generation_net = Decoder(z_dim, hidden_1, hidden_2, self.size)
        self.recognition_net = Encoder(z_dim, hidden_1, hidden_2, self.size)

    def model(self, batch, num_data=None):
        xs, ys = quadrants(batch.x, self.num_quadrant_inputs)
        batch_size = xs.shape[0]
        with self.data_plate(batch, num_data):
            # Prior network uses the baseline predictions as initial guess.
            # This is the generative process with recurrent connection
            y_hat = self.baseline_net(xs).view(xs.shape)

            # sample the handwriting style from the prior distribution, which is
            # modulated by the input xs.
            prior_loc, prior_scale = self.prior_net(xs, y_hat)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))

            # the output y is generated from the distribution pθ(y|x, z)
            loc = self.generation_net(zs)

            if ys is not None:
                # In training, we will only sample in the masked image
                mask_loc = loc[(xs == -1).view(-1, self.size)].view(batch_size, -1)
                mask_ys = ys[xs == -1].view(batch_size, -1)
                pyro.sample("y", dist.Bernoulli(mask_loc, validate_args=False).to_event(1), obs=mask_ys)
            else:
                # In testing, no need to sample: the output is already a
                # probability in [0, 1] range, which better represent pixel
                # values considering grayscale. If we sample, we will force
                # each pixel to be either 0 or 1, killing the grayscale
                pyro.deterministic("y", loc.detach())

            # return the loc so we can visualize it later
            return loc

    def guide(self, batch, num_data=None):
        xs, ys = quadrants(batch.x, self.num_quadrant_inputs)
        with self.data_plate(batch, num_data):
            if ys is None:
                # at inference time, ys is not provided. In that case,
                # the model uses the prior network
                y_hat = self.baseline_net(xs).view(xs.shape)
                loc, scale = self.prior_net(xs, y_hat)
            else:
                # at training time, uses the variational distribution
                # q(z|x,y) = normal(loc(x,y),scale(x,y))
                loc, scale = self.recognition_net(xs, ys)

            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
