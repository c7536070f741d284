"""ProdLDA (Srivastava & Sutton 2017, "Autoencoding Variational Inference for Topic Models") as
Pyro's tutorial writes it (``tutorial/source/prodlda.ipynb``), ported to a pyrovae family
(``prodlda``): documents are rows of word counts, each a mixture of topics.

The encoder, the decoder, ``model`` and ``guide`` are Pyro's, with these changes only:

- the base class is :class:`pyrovae.Model`, with the class attribute ``counts = True`` (the
  family scores counts: a file's uint8 values reach it as counts, not divided by 255);
- ``model`` and ``guide`` take ``(batch, num_data=None)``, and ``docs`` is ``batch.x``, one row
  of counts per document (flattened: a data set of images gives one count per pixel);
- the plate is ``self.data_plate(batch, num_data)`` (Pyro's ``pyro.plate("documents", ...)``),
  so that a minibatch of M of the N documents is scaled by N/M;
- the vocabulary size comes from ``event_shape`` (its product).

Its networks use ``BatchNorm1d`` and ``softmax(dim=1)``, which assume the batch's own shapes:
with one particle, the default, that is what they get; with more, pyrovae runs the particles one
after another (the dry run shows that a particle plate fails them). The model takes its documents'
lengths from x (``total_count``), so it is drawn given test documents, never from its prior
alone. Train it with

    pyrovae train examples/configs/prodlda_digits.toml
"""

import math

import pyro
import pyro.distributions as dist
import torch.nn as nn
import torch.nn.functional as F

import pyrovae


class Encoder(nn.Module):
    # Base class for the encoder net, used in the guide
    def __init__(self, vocab_size, num_topics, hidden, dropout):
        super().__init__()
        self.drop = nn.Dropout(dropout)  # to avoid component collapse
        self.fc1 = nn.Linear(vocab_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fcmu = nn.Linear(hidden, num_topics)
        self.fclv = nn.Linear(hidden, num_topics)
        # NB: here we set `affine=False` to reduce the number of learning parameters
        # See https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm1d.html
        # for the effect of this flag in BatchNorm1d
        self.bnmu = nn.BatchNorm1d(num_topics, affine=False)  # to avoid component collapse
        self.bnlv = nn.BatchNorm1d(num_topics, affine=False)  # to avoid component collapse

    def forward(self, inputs):
        h = F.softplus(self.fc1(inputs))
        h = F.softplus(self.fc2(h))
        h = self.drop(h)
        # μ and Σ are the outputs
        logtheta_loc = self.bnmu(self.fcmu(h))
        logtheta_logvar = self.bnlv(self.fclv(h))
        logtheta_scale = (0.5 * logtheta_logvar).exp()  # Enforces positivity
        return logtheta_loc, logtheta_scale


class Decoder(nn.Module):
    # Base class for the decoder net, used in the model
    def __init__(self, vocab_size, num_topics, dropout):
        super().__init__()
        self.beta = nn.Linear(num_topics, vocab_size, bias=False)
        self.bn = nn.BatchNorm1d(vocab_size, affine=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, inputs):
        inputs = self.drop(inputs)
        # the output is σ(βθ)
        return F.softmax(self.bn(self.beta(inputs)), dim=1)


@pyrovae.MODELS.register("prodlda")
class ProdLDA(pyrovae.Model):
    """ProdLDA: logtheta ~ N(0, I) per document, theta = softmax(logtheta), and the document's
    words ~ Multinomial(its length, softmax(BN(beta theta))); the guide is the encoder's Gaussian."""

    counts = True

    def __init__(self, event_shape, num_topics: int = 20, hidden: int = 100, dropout: float = 0.2):
        super().__init__(event_shape)
        vocab_size = math.prod(event_shape)
        self.vocab_size = vocab_size
        self.num_topics = num_topics
        self.encoder = Encoder(vocab_size, num_topics, hidden, dropout)
        self.decoder = Decoder(vocab_size, num_topics, dropout)

    def model(self, batch, num_data=None):
        docs = batch.x.reshape(len(batch), -1)
        with self.data_plate(batch, num_data):
            # Dirichlet prior 𝑝(𝜃|𝛼) is replaced by a logistic-normal distribution
            logtheta_loc = docs.new_zeros((docs.shape[0], self.num_topics))
            logtheta_scale = docs.new_ones((docs.shape[0], self.num_topics))
            logtheta = pyro.sample("logtheta", dist.Normal(logtheta_loc, logtheta_scale).to_event(1))
            theta = F.softmax(logtheta, -1)

            # conditional distribution of 𝑤𝑛 is defined as
            # 𝑤𝑛|𝛽,𝜃 ~ Categorical(𝜎(𝛽𝜃))
            count_param = self.decoder(theta)
            # Currently, PyTorch Multinomial requires `total_count` to be homogeneous.
            # Because the numbers of words across documents can vary,
            # we will use the maximum count accross documents here.
            # This does not affect the result because Multinomial.log_prob does
            # not require `total_count` to evaluate the log probability.
            total_count = int(docs.sum(-1).max())
            pyro.sample("obs", dist.Multinomial(total_count, count_param), obs=docs)

    def guide(self, batch, num_data=None):
        docs = batch.x.reshape(len(batch), -1)
        with self.data_plate(batch, num_data):
            # Dirichlet prior 𝑝(𝜃|𝛼) is replaced by a logistic-normal distribution,
            # where μ and Σ are the encoder network outputs
            logtheta_loc, logtheta_scale = self.encoder(docs)
            pyro.sample("logtheta", dist.Normal(logtheta_loc, logtheta_scale).to_event(1))
