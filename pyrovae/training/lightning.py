"""pyrovae models in PyTorch Lightning: :class:`Module`, a ``LightningModule`` whose
``training_step`` is the step loss :func:`pyrovae.fit` takes (the same :class:`~pyrovae.infer.algorithms.Algorithm`
object, not a copy), and :class:`DataModule`, a ``LightningDataModule`` over pyrovae's data seam.

Lightning's ``Trainer`` then brings its strategies (DDP on CPUs or GPUs), loggers, callbacks and
precision plugins, as scvi-tools trains its Pyro modules and as Pyro's own
``examples/svi_lightning.py`` does::

    import lightning
    import pyrovae
    from pyrovae.lightning import DataModule, Module

    data = pyrovae.load_dataset("digits")
    vae = pyrovae.VAE(data.event_shape, latent_dim=2)
    lightning.Trainer(max_epochs=20).fit(Module(vae, estimator="analytic"), DataModule(data, batch_size=100))

**The objective.** Each step's loss is -(1/M) sum_i L_i over the process's minibatch of M
points, with the model's local sites under ``pyro.plate("data", size=N)`` (N the training split's
size): the per-datapoint loss of :mod:`pyrovae.training.loop`. Under DDP each process holds its
shard (Lightning's ``DistributedSampler``) and DDP averages the gradients, so a step of K
processes of M points each is the step on their K M points together. KL annealing: ``beta`` and
``kl_warmup_epochs`` as in ``[train]``. The family's reparameterization noise is drawn in the step.

**What stays in float32.** Under a Lightning precision plugin (``precision="bf16-mixed"``), the
networks' outputs are cast back to float32 where they leave each network
(:func:`~pyrovae.training.precision.float32_outputs`), so the log-densities, the KL and the ELBO are
summed in float32, as under ``train.precision``.

**Logged:** ``train_elbo`` (every step and epoch mean), ``validation_elbo`` (each validation
epoch, over the validation split where the data have one, else the test split) and ``test_elbo``
(``Trainer.test``), each in nats per datapoint, higher is better.
"""

import contextlib
import dataclasses
from typing import Any, Dict, Optional

import torch

try:
    import lightning as L
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError("pyrovae.lightning needs Lightning: pip install 'pyrovae[lightning]'") from e

from pyrovae.data.batch import Batch
from pyrovae.data.datasets import as_dataset
from pyrovae.errors import ConfigError
from pyrovae.infer.algorithms import build_algorithm
from pyrovae.infer.estimators import resolve_estimator
from pyrovae.models.base import per_minibatch_labels
from pyrovae.training.loop import beta_at, prepared_algorithm
from pyrovae.training.optim import build_optimizer, default_optimizer
from pyrovae.training.precision import float32_outputs
from pyrovae.training.state import kept_buffers
from pyrovae.training.train_config import TrainConfig


class _Indices(torch.utils.data.Dataset):
    """0 .. n-1: what a sampler draws; the collate function reads the points (one read per batch)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class _TrainingBatch:
    """Indices -> the training :class:`~pyrovae.Batch` at them (dynamic binarization drawn here,
    a streamed split read here: in a worker process where ``num_workers`` > 0)."""

    def __init__(self, data):
        self.data = data

    def __call__(self, indices) -> Batch:
        return self.data.train_batch(torch.as_tensor(indices, device=self.data.train_split.device))


class _HeldOutBatch:
    """Indices -> the held-out :class:`~pyrovae.Batch` of a split (every label visible)."""

    def __init__(self, split):
        self.split = split

    def __call__(self, indices) -> Batch:
        index = torch.as_tensor(indices, device=self.split.device)
        labels = self.split.labels
        return Batch(self.split.read(index), None if labels is None else labels.index_select(0, index))


class DataModule(L.LightningDataModule):
    """A pyrovae :class:`~pyrovae.Dataset` (or anything :func:`pyrovae.fit` takes as data) as a
    ``LightningDataModule``: shuffled training minibatches of ``batch_size`` (each process its
    shard under DDP, by Lightning's ``DistributedSampler``), and the validation split (else the
    test split) and the test split in order. The points are read through the data's own splits,
    in memory or streamed from disk, ``num_workers`` processes reading ahead."""

    def __init__(self, dataset, batch_size: int = 100, num_workers: int = 0):
        super().__init__()
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"DataModule: batch_size = {batch_size!r}: must be an integer >= 1")
        self.dataset = as_dataset(dataset)
        self.batch_size, self.num_workers = batch_size, num_workers

    def _loader(self, n: int, collate, shuffle: bool) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(_Indices(n), batch_size=self.batch_size, shuffle=shuffle,
                                           collate_fn=collate, num_workers=self.num_workers,
                                           persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        return self._loader(self.dataset.num_train, _TrainingBatch(self.dataset), shuffle=True)

    def val_dataloader(self):
        split = self.dataset.validation_split or self.dataset.test_split
        return self._loader(len(split), _HeldOutBatch(split), shuffle=False)

    def test_dataloader(self):
        return self._loader(len(self.dataset.test_split), _HeldOutBatch(self.dataset.test_split), shuffle=False)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device) if isinstance(batch, Batch) else super().transfer_batch_to_device(
            batch, device, dataloader_idx)


class Module(L.LightningModule):
    """A pyrovae model (a :class:`~pyrovae.Model`: a VAE, any family, a plugin's) trained by SVI
    under Lightning (see the module's docstring).

    :param model: the model and its guide.
    :param str estimator: ``analytic`` (estimator B), ``mc`` (estimator A), ``iwae`` or ``auto``,
        as ``train.estimator``.
    :param dict optim: an optimizer spec as ``[optim]``, e.g. ``{"name": "adam", "lr": 1e-3}``.
    :param int num_particles: L samples per datapoint (k for ``iwae``).
    :param float beta: the KL weight, reached linearly over ``kl_warmup_epochs`` epochs.
    :param int num_data: N, the size the plate scales to; default the data module's training split.
    """

    def __init__(self, model, estimator: str = "analytic", optim: Optional[Dict[str, Any]] = None,
                 num_particles: int = 1, beta: float = 1.0, kl_warmup_epochs: int = 0,
                 num_data: Optional[int] = None):
        super().__init__()
        self.model = model
        self.optim = dict(optim or default_optimizer())
        self.train_config = TrainConfig(estimator=estimator, num_particles=num_particles, beta=beta,
                                        kl_warmup_epochs=kl_warmup_epochs)
        self.train_config.check()
        self.num_data = num_data
        #: the step's loss: the same object pyrovae.fit's loop calls (built in setup, from the data)
        self.algorithm = None
        self._float32 = contextlib.ExitStack()

    # -- building, from the data -------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data = getattr(datamodule, "dataset", None)
        if self.algorithm is None:
            self.build(data)
        self._float32.enter_context(float32_outputs(self.model))  # under a precision plugin, the ELBO in float32

    def teardown(self, stage: str) -> None:
        self._float32.close()

    def build(self, data=None) -> None:
        """The algorithm for ``data`` (a :class:`~pyrovae.Dataset`; N from it unless ``num_data`` was
        given), checked on two of its points as :func:`pyrovae.fit` checks them."""
        if data is None and self.num_data is None:
            raise ValueError("Module: train with a pyrovae.lightning.DataModule, or give num_data (N)")
        num_data = self.num_data or data.num_train
        cfg = self.train_config
        if data is not None and data.labeled is not None and per_minibatch_labels(self.model):
            raise ConfigError(f"pyrovae.lightning: model ({type(self.model).__name__}) takes all-labelled and "
                              "all-unlabelled minibatches (labels = 'per_minibatch'), which the DataModule's "
                              "shuffled minibatches are not; train it with pyrovae.fit or pyrovae train")
        if data is not None:
            estimator, self.algorithm = prepared_algorithm(self.model, data, cfg, num_data)
        else:
            with kept_buffers(self.model):
                estimator = resolve_estimator(cfg.estimator, self.model, None, cfg.engine)
                self.algorithm = build_algorithm(self.model, cfg, estimator, num_data)
        self.train_config = dataclasses.replace(cfg, estimator=estimator)

    # -- the steps ---------------------------------------------------------------------------------
    def beta_now(self) -> float:
        """beta at this step: linear over ``kl_warmup_epochs`` epochs (:func:`pyrovae.training.loop.beta_at`)."""
        return beta_at(self.train_config, self.global_step, max(1, self.trainer.num_training_batches))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        noise = None
        if self.algorithm.draws_noise:
            shape = self.model.noise_shape(len(batch), self.train_config.num_particles)
            noise = None if shape is None else torch.randn(shape, device=batch.device)
        step = self.algorithm.loss(batch, noise, self.beta_now(), len(batch))
        self.log("train_elbo", -step.elbo_sum / len(batch), on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=len(batch), sync_dist=True)
        return step.loss

    def _held_out(self, batch: Batch, name: str) -> None:
        step = self.algorithm.loss(batch, None, 1.0, len(batch))
        self.log(name, -step.elbo_sum / len(batch), on_epoch=True, prog_bar=True, batch_size=len(batch),
                 sync_dist=True)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._held_out(batch, "validation_elbo")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._held_out(batch, "test_elbo")

    def configure_optimizers(self):
        return build_optimizer(self.optim, [p for p in self.model.parameters() if p.requires_grad])
