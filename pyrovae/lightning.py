"""``pyrovae.lightning``: :class:`Module` and :class:`DataModule`, a pyrovae model and its data in
PyTorch Lightning (``pip install 'pyrovae[lightning]'``; see :mod:`pyrovae.training.lightning`)."""

from pyrovae.training.lightning import DataModule, Module

__all__ = ["DataModule", "Module"]
