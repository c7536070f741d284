"""Throughput of the families past the VAE (``benchmarks/throughput.py --family ...``).

- ``cvae``: pyrovae's ``cvae`` family against a hand-written PyTorch conditional VAE (784+10 ->
  400 -> 20, 20+10 -> 400 -> 784, ReLU, Bernoulli, closed-form KL), the labels one-hot;
- ``m2``: pyrovae's ``m2`` family against a hand-written PyTorch M2 (the same encoder and decoder
  reading y, a 784-400-10 classifier) on MNIST with ``--labels`` labels: the unlabelled points'
  classes summed out in closed form, the labelled points' alpha log q(y | x) added, as in
  Kingma et al. (2014);
- ``amortized``: the generic trace path, a model written in Pyro primitives with no guide (its
  :class:`pyrovae.AmortizedGuide` built from the trace), trained by ``pyrovae.fit`` against
  Pyro's own ``SVI`` with ``TraceMeanField_ELBO`` on the same model and guide.

Every loop draws minibatches by index from the same tensors, with Adam 1e-3, in alternating
repeats; the table gives images per second (medians) and the ratio of times.
"""

import math
import statistics
import time
import warnings

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, TraceMeanField_ELBO
from torch import nn
from torch.nn import functional as F

import pyrovae

HIDDEN, LATENT, PIXELS, CLASSES = 400, 20, 784, 10


def _mlp(n_in, n_out):
    return nn.Sequential(nn.Linear(n_in, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, n_out))


def _kl(loc, log_var):
    return 0.5 * (loc.pow(2) + log_var.exp() - 1 - log_var).sum(-1)


def _neg_elbo(encoder, decoder, x, y):
    """-ELBO of log p(x | y) for each (x, y) row: Bernoulli reconstruction plus the closed-form KL."""
    c = F.one_hot(y, CLASSES).float()
    loc, log_var = encoder(torch.cat([x, c], -1)).chunk(2, -1)
    z = loc + torch.randn_like(loc) * torch.exp(0.5 * log_var)
    logits = decoder(torch.cat([z, c], -1))
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1) + _kl(loc, log_var)


class TorchCVAE(nn.Module):
    """A hand-written conditional VAE: q(z | x, y), p(x | z, y)."""

    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = _mlp(PIXELS + CLASSES, 2 * LATENT), _mlp(LATENT + CLASSES, PIXELS)

    def loss(self, x, y):
        return _neg_elbo(self.encoder, self.decoder, x, y).sum()


class TorchM2(TorchCVAE):
    """A hand-written M2: labelled points with their label, unlabelled ones with every class."""

    def __init__(self, alpha_per_label):
        super().__init__()
        self.classifier = _mlp(PIXELS, CLASSES)
        self.alpha_per_label = alpha_per_label

    def neg_elbo(self, x, y):
        """-L(x, y) for each (x, y) row, log p(y) = -log C included."""
        return _neg_elbo(self.encoder, self.decoder, x, y) + math.log(CLASSES)

    def loss(self, x, y, labelled):
        log_q = F.log_softmax(self.classifier(x), -1)
        xl, yl, xu = x[labelled], y[labelled], x[~labelled]
        supervised = self.neg_elbo(xl, yl).sum() - self.alpha_per_label * log_q[labelled].gather(
            -1, yl.unsqueeze(-1)).sum()
        m = xu.shape[0]
        per_class = self.neg_elbo(xu.repeat(CLASSES, 1), torch.arange(CLASSES, device=x.device).repeat_interleave(m))
        q = log_q[~labelled].exp()
        unsupervised = (q * per_class.reshape(CLASSES, m).T).sum() + (q * log_q[~labelled]).sum()
        return supervised + unsupervised


def run_hand_written(family, data, images, batch_size, alpha_per_label):
    model = TorchCVAE() if family == "cvae" else TorchM2(alpha_per_label)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randint(data.num_train, (images,))
    start = time.perf_counter()
    for index in order.split(batch_size):
        x, y = data.train[index], data.train_y[index]
        loss = model.loss(x, y) if family == "cvae" else model.loss(x, y, data.labeled[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return images / (time.perf_counter() - start)


def _fit(model, data, images, batch_size):
    sub = torch.randperm(data.num_train)[:images]
    # a label budget only for a family that reads labels (pyrovae refuses one that reaches nothing)
    budget = None if data.labeled is None or not getattr(model, "num_classes", None) else data.labeled[sub]
    part = pyrovae.Dataset(data.name, data.train[sub], data.test[:batch_size], "none", data.train_y[sub],
                           data.test_y[:batch_size], budget)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyrovae.PosteriorCollapseWarning)
        metrics = pyrovae.fit(model, part, epochs=1, batch_size=batch_size, progress=False, eval_every=1,
                              optim={"name": "adam", "lr": 1e-3})
    return images / metrics[-1]["train_seconds"]


def run_pyrovae(family, data, images, batch_size, alpha_per_label):
    net = {"name": "mlp", "hidden": [HIDDEN], "activation": "relu"}
    if family == "cvae":
        model = pyrovae.CVAE((PIXELS,), CLASSES, LATENT, encoder=net, decoder=net)
    else:
        model = pyrovae.M2((PIXELS,), CLASSES, LATENT, encoder=net, decoder=net, classifier=net)
    return _fit(model, data, images, batch_size)


class PyroOnlyVAE(pyrovae.Model):
    """The paper's VAE in Pyro primitives, with no guide (pyrovae builds it)."""

    def __init__(self, event_shape=(PIXELS,), name: str = ""):
        super().__init__(event_shape, name)
        self.decoder = _mlp(LATENT, PIXELS)
        self.guide_encoder = {"name": "mlp", "hidden": [HIDDEN]}

    def model(self, batch, num_data=None):
        x = batch.x if isinstance(batch, pyrovae.Batch) else batch
        with pyrovae.data_plate(x, num_data):
            z = pyro.sample("z", dist.Normal(x.new_zeros(LATENT), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)


def run_amortized_pyrovae(data, images, batch_size):
    return _fit(PyroOnlyVAE(), data, images, batch_size)


def run_amortized_pyro(data, images, batch_size):
    model = PyroOnlyVAE()
    pyro.clear_param_store()
    svi = SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-3}), TraceMeanField_ELBO())
    order = torch.randint(data.num_train, (images,))
    start = time.perf_counter()
    for index in order.split(batch_size):
        svi.step(pyrovae.Batch(data.train[index]), data.num_train)
    return images / (time.perf_counter() - start)


def benchmark(family, data, steps, repeats, batch_size):
    """Images per second of each loop (medians over alternating repeats) and the ratio of times."""
    alpha_per_label = 0.1 * data.num_train / float(data.labeled.sum()) if data.labeled is not None else 0.0
    if family == "amortized":
        loops = {"pyro_svi": lambda n: run_amortized_pyro(data, n, batch_size),
                 "pyrovae": lambda n: run_amortized_pyrovae(data, n, batch_size)}
    else:
        loops = {"torch": lambda n: run_hand_written(family, data, n, batch_size, alpha_per_label),
                 "pyrovae": lambda n: run_pyrovae(family, data, n, batch_size, alpha_per_label)}
    for loop in loops.values():  # warm-up
        loop(max(2, steps // 10) * batch_size)
    runs = {name: [] for name in loops}
    names = list(loops)
    for repeat in range(repeats):
        k = repeat % len(names)
        for name in names[k:] + names[:k]:
            runs[name].append(loops[name](steps * batch_size))
    med = {k: statistics.median(v) for k, v in runs.items()}
    reference = names[0]
    return {"family": family, "batch_size": batch_size, "steps_per_repeat": steps, "repeats": repeats,
            "reference": reference, **{f"{k}_images_per_s": v for k, v in med.items()},
            "pyrovae_time_vs_reference": med[reference] / med["pyrovae"],
            "paired_pyrovae_time_vs_reference": statistics.median(
                r / p for r, p in zip(runs[reference], runs["pyrovae"])),
            "labels": None if data.labeled is None else int(data.labeled.sum()), "all_runs": runs}
