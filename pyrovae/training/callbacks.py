"""What runs around the training loop: :class:`Callback` (the hooks) and :data:`CALLBACKS` (the
callbacks a config names, ``log.callbacks``).

The loop calls each callback's hooks with the :class:`~pyrovae.training.loop.Trainer`; the run
folder (:class:`pyrovae.app.runfolder.RunFolder`) is one, and so are TensorBoard and MLflow
(``"tensorboard"``, ``"mlflow"``: the entries ``log.tensorboard`` and ``log.mlflow`` switch on).
A user's callback is one class in a plugin:

    @pyrovae.CALLBACKS.register("print_elbo")
    class PrintELBO(pyrovae.Callback):
        def __init__(self, every: int = 1):
            self.every = every

        def on_epoch_end(self, trainer, record):
            if record["epoch"] % self.every == 0:
                print(record["epoch"], record["train_elbo"])

switched on by ``log.callbacks = ["print_elbo"]`` or ``[{ name = "print_elbo", every = 5 }]``.
Its constructor takes its options, and ``run_dir`` (the run folder) and ``config`` (the run's
:class:`~pyrovae.Config`) where it names them.
"""

from typing import Dict, Optional

from pyrovae.registry import Registry

CALLBACKS = Registry("callback", context=("run_dir", "config"))
"""Callbacks by name (``log.callbacks``): each a :class:`Callback` subclass (or a function that
returns one), built with its options and, where it names them, ``run_dir`` and ``config``."""


class Callback:
    """Hooks around the loop; each gets the :class:`~pyrovae.training.loop.Trainer` (its model,
    optimizer, counters, metrics, ``state()``). Override what you need."""

    def on_start(self, trainer) -> None:
        """Before the first step (the run folder restores a checkpoint here)."""

    def on_epoch_end(self, trainer, record: Dict) -> None:
        """After an epoch, its record complete (evaluated when due) and appended to ``trainer.metrics``."""

    def on_interrupt(self, trainer, mid_epoch: bool) -> Optional[str]:
        """A signal stops the run (mid-epoch: at a step; else after an epoch's callbacks): save what
        is needed; return what the message should say of it (e.g. how to resume)."""
        return None

    def on_end(self, trainer) -> None:
        """After the last epoch (the run folder draws its figures here)."""

    def on_close(self, trainer) -> None:
        """Always, last, however the loop ended (close files)."""

    def kept(self) -> Optional[str]:
        """What survives a failure, for its message (e.g. the last good checkpoint)."""
        return None
