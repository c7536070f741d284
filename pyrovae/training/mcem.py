"""``MonteCarloEM``: Monte Carlo EM (Kingma & Welling 2014, Sec. 5) as a front for :func:`fit`
with ``train.algorithm = "mcem"``, one epoch at a time.

There is one Monte Carlo EM loop, the training loop's: per minibatch the ``mcem`` algorithm
(:class:`pyrovae.infer.algorithms.MonteCarloEMAlgorithm`) moves each datapoint's persistent
HMC chain on p_theta(z | x_i) (the E-step, :class:`pyrovae.infer.hmc.Chains`) and takes
``weight_updates`` gradient steps on -(1/M) sum_i log p_theta(x_i, z_i) (the M-step). This class
keeps one :class:`~pyrovae.training.loop.Trainer` and runs it an epoch further per call, for
scripts that score the model between epochs (the reproduction of the paper's Figure 3).
"""

from typing import Callable, Dict, List, Optional

import torch

from pyrovae.data.datasets import Dataset
from pyrovae.training.loop import Trainer
from pyrovae.training.train_config import TrainConfig


class MonteCarloEM:
    """Monte Carlo EM for a :class:`~pyrovae.VAE`'s generative model (its encoder is unused).

    :param VAE vae: its prior and decoder are trained.
    :param Dataset data: the training split is ``data.train`` (binarized as ``data.binarize`` says).
    :param dict optim: an optimizer spec (the paper: Adagrad); only the decoder and prior get gradients.
    :param int num_leapfrog: leapfrog steps per HMC transition (the paper: 10).
    :param int hmc_steps: HMC transitions per E-step.
    :param int weight_updates: gradient steps on theta per E-step (the paper: 5).
    :param float target_accept: the acceptance rate the step sizes are tuned to (the paper: 0.9).
    :param float initial_step_size: the leapfrog step size to start from.
    :param int seed: seeds the chains' starting points, momenta and the data order.
    :param int batch_size: the minibatch size M.

    The chains start from the prior and persist: each datapoint's latent is kept between its
    visits; the shared step size is tuned after every E-step. ``samples_seen`` counts datapoints
    per E-step (one pass over the data is N samples, as for AEVB).
    """

    def __init__(self, vae, data: Dataset, optim: Optional[dict] = None, num_leapfrog: int = 10,
                 hmc_steps: int = 1, weight_updates: int = 5, target_accept: float = 0.9,
                 initial_step_size: float = 0.1, seed: int = 0, batch_size: int = 100):
        algorithm = {"name": "mcem", "num_leapfrog": num_leapfrog, "hmc_steps": hmc_steps,
                     "weight_updates": weight_updates, "target_accept": target_accept,
                     "initial_step_size": initial_step_size}
        self.vae, self.data, self.optim = vae, data, optim or {"name": "adagrad", "lr": 0.02}
        self.options = dict(algorithm=algorithm, seed=seed, device=str(vae.device), progress=False,
                            eval_every=1_000_000_000)
        self._build(batch_size)  # the options are checked now

    def _build(self, batch_size: int) -> None:
        cfg = TrainConfig(epochs=1, batch_size=min(batch_size, self.data.num_train), **self.options)
        cfg.check()
        self.trainer = Trainer(self.vae, self.data, cfg, self.optim)

    @property
    def chains(self):
        return self.trainer.algorithm.chains

    @property
    def samples_seen(self) -> int:
        return self.trainer.counters["samples_seen"]

    @property
    def epoch(self) -> int:
        return self.trainer.counters["epoch"]

    @property
    def z(self) -> torch.Tensor:
        return self.chains.z

    def run_epoch(self, batch_size: Optional[int] = None) -> Dict:
        """One pass over the training split in a seeded random order; returns its record (the
        loop's, with ``train_log_joint``, the mean log p(x, z) at the chains, ``accept_rate``
        and ``step_size``)."""
        if batch_size is not None and batch_size != self.trainer.m:
            if self.epoch:
                raise ValueError(f"MonteCarloEM: batch_size = {batch_size}, but its epochs so far had {self.trainer.m}")
            self._build(batch_size)
        self.trainer.cfg.epochs = self.epoch + 1
        record = dict(self.trainer.run()[-1])
        return {**record, "train_log_joint": record["train_objective"], "accept_rate": self.chains.last_accept,
                "step_size": self.chains.step_size}

    def fit(self, epochs: int, batch_size: Optional[int] = None,
            callback: Optional[Callable[[Dict], None]] = None) -> List[Dict]:
        """``epochs`` passes; ``callback(record)`` after each (e.g. to evaluate)."""
        records = []
        for _ in range(epochs):
            records.append(self.run_epoch(batch_size))
            if callback is not None:
                callback(records[-1])
        return records
