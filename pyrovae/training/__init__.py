"""The training loop and what it needs: ``loop`` (fit, Trainer, Callback, TrainConfig), ``optim``,
``memory`` (sizes against the memory a device has), ``distributed`` (torchrun), ``state``
(checked loading of parameters) and ``mcem`` (MonteCarloEM, a front for fit)."""
