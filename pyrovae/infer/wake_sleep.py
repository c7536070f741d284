"""The wake-sleep algorithm (Hinton, Dayan, Frey & Neal 1995) as a Pyro loss.

Kingma & Welling (2014, Sec. 5) compare AEVB with wake-sleep on the same model p_theta(x, z)
and recognition model q_phi(z | x). Wake-sleep does not maximise one objective; each
step takes two gradient steps:

- wake phase, theta: maximise log p_theta(x, z) with z ~ q_phi(z | x) for the data x
  (no gradient flows through z into phi);
- sleep phase, phi: maximise log q_phi(z | x) with (z, x) ~ p_theta(z) p_theta(x | z),
  "dreams" drawn from the model (no gradient flows into theta).

Both terms are read off Pyro traces of the user's ``model`` and ``guide`` under their
plates, so a minibatch of M points out of N carries the scale N/M like every Pyro ELBO:

    loss = -(N/M) sum_i log p(x_i, z_i)  -  (N/M) sum_i log q(z~_i | x~_i),

its gradient in theta is the wake gradient and in phi the sleep gradient. The dreams are as
many as the minibatch (the model runs with the data argument for its shape, its observed
sites resampled by ``poutine.uncondition``).

[1] "The wake-sleep algorithm for unsupervised neural networks", G. E. Hinton, P. Dayan,
    B. J. Frey, R. M. Neal, Science 268 (1995)
"""

import dataclasses

import pyro.infer
import torch
from pyro import poutine
from pyro.util import warn_if_nan

from pyrovae.data.batch import Batch


class WakeSleep(pyro.infer.ELBO):
    """Wake-sleep as a loss object for :class:`pyro.infer.SVI` (or :func:`pyrovae.fit` with
    ``algorithm="wake_sleep"``).

    :param str observed_site: the model's observed sample site whose dreamed value the sleep
        phase feeds to the guide.
    :param int data_arg: the position of the data among the arguments of model and guide
        (replaced by the dream in the sleep phase).

    ``loss`` returns the wake loss plus the sleep loss; neither is a bound on log p(x): to
    follow training, compute the ELBO of the recognition model separately (as
    :func:`pyrovae.fit` does).

    Example::

        svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adagrad({"lr": 0.02}), WakeSleep())
        svi.step(x_batch, num_data=N)
    """

    def __init__(self, observed_site: str = "x", data_arg: int = 0):
        super().__init__(num_particles=1)
        self.observed_site, self.data_arg = observed_site, data_arg

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("WakeSleep traces model and guide per phase: see wake_loss and sleep_loss")

    def wake_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """-log p(x, z) with z ~ q(z | x) held fixed: differentiable in the model's parameters only."""
        with torch.no_grad():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        return -model_trace.log_prob_sum()

    def dream(self, model, *args, **kwargs) -> poutine.Trace:
        """A trace of (z, x) ~ p(z) p(x | z), shaped like the minibatch in ``args``."""
        with torch.no_grad():
            trace = poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
        if self.observed_site not in trace.nodes:
            raise ValueError(f"WakeSleep: the model has no site {self.observed_site!r} to dream")
        return trace

    def sleep_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """-log q(z~ | x~) on a dream: differentiable in the guide's parameters only."""
        dream = self.dream(model, *args, **kwargs)
        args = list(args)
        dreamed, data = dream.nodes[self.observed_site]["value"], args[self.data_arg]
        if isinstance(data, Batch):  # the dream in the data's shape (a model may observe x flattened), labels kept
            dreamed = dataclasses.replace(data, x=dreamed.reshape(data.x.shape) if dreamed.numel() == data.x.numel()
                                          else dreamed)
        args[self.data_arg] = dreamed
        guide_trace = poutine.trace(poutine.replay(guide, trace=dream)).get_trace(*args, **kwargs)
        return -guide_trace.log_prob_sum()

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss = self.wake_loss(model, guide, *args, **kwargs) + self.sleep_loss(model, guide, *args, **kwargs)
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return loss.item()
