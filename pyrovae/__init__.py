"""pyrovae: Kingma & Welling's Auto-Encoding Variational Bayes as a declarative Pyro model.

Public API::

    Model          the base of every model family: a Pyro model and guide over a Batch
    VAE            the ``vae`` family (the default); CVAE, M2, HVAE, TwoLevelVAE: ``cvae``, ``m2``, ``hvae``,
                   ``two_level_vae``
    MODELS         model families by name; DATASETS data sources; PRIORS, LIKELIHOODS, ENCODERS, DECODERS,
                   POSTERIORS, CLASSIFIERS,
                   OPTIMIZERS, ESTIMATORS, ALGORITHMS
    Batch          what flows from data to model: x, labels y, the labelled mask
    data_plate     the plate "data" with the minibatch as subsample (scales sites by N/M)
    fit, train     the SVI loop, and whole runs with their folders
    load           a trained model from a run folder
    load_dataset   data sets as tensors (digits, mnist, frey_face, file), with labels
    load_config    TOML -> validated Config
    make_elbo      an estimator name -> a Pyro ELBO; IWAE, the importance-weighted bound
    log_likelihood importance-sampled log p(x); evaluate: every test number
    WakeSleep      the wake-sleep algorithm as a Pyro loss (train.algorithm = "wake_sleep")
    MonteCarloEM   Monte Carlo EM with per-datapoint HMC E-steps; hmc_log_likelihood
"""

import ast
import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from pyrovae.errors import ConfigError, DataError, PyrovaeError, RunDirError, TrackingError
from pyrovae.version import __version__  # noqa: F401 (the package's version)

if TYPE_CHECKING:  # the public names, each imported on first use (see __getattr__); listed here once
    from pyrovae.app.config import Config, DataConfig, ModelConfig
    from pyrovae.app.config_files import load_config
    from pyrovae.app.opening import build_model, load
    from pyrovae.app.run import evaluate_run, train
    from pyrovae.app.runfolder import RunFolder
    from pyrovae.app.tracking import MLflowLog, TensorBoardLog
    from pyrovae.data.batch import Batch
    from pyrovae.data.catalog import DATASETS
    from pyrovae.data.datasets import Dataset, load_dataset
    from pyrovae.data.formats import FORMATS, Format
    from pyrovae.infer.algorithms import ALGORITHMS, Algorithm
    from pyrovae.infer.elbos import (
        LatentScale,
        elbo_per_datapoint,
        elbo_terms,
        make_elbo,
        objective_per_datapoint,
    )
    from pyrovae.infer.estimators import ESTIMATORS, IWAE, Estimator, resolve_estimator
    from pyrovae.infer.evaluate import (
        active_units,
        dataset_elbo,
        dataset_terms,
        evaluate,
        kl_per_dimension,
        log_likelihood,
    )
    from pyrovae.infer.hmc import hmc_log_likelihood
    from pyrovae.infer.wake_sleep import WakeSleep
    from pyrovae.models.amortized import AmortizedGuide
    from pyrovae.models.base import Model
    from pyrovae.models.cvae import CVAE
    from pyrovae.models.hvae import HVAE
    from pyrovae.models.m2 import M2
    from pyrovae.models.registry import MODELS
    from pyrovae.models.terms import Terms, data_plate
    from pyrovae.models.two_level import TwoLevelVAE
    from pyrovae.models.vae import VAE
    from pyrovae.parts.likelihoods import LIKELIHOODS, Likelihood
    from pyrovae.parts.nets import CLASSIFIERS, DECODERS, ENCODERS
    from pyrovae.parts.posteriors import POSTERIORS
    from pyrovae.parts.priors import PRIORS, Prior
    from pyrovae.training.callbacks import CALLBACKS, Callback
    from pyrovae.training.loop import Interrupted, PosteriorCollapseWarning, TrainingError, fit
    from pyrovae.training.mcem import MonteCarloEM
    from pyrovae.training.optim import OPTIMIZERS, build_optimizer
    from pyrovae.training.train_config import TrainConfig

__all__ = [
    "DATASETS", "FORMATS", "Format",
    "Model", "AmortizedGuide", "VAE", "CVAE", "M2", "HVAE", "TwoLevelVAE", "POSTERIORS", "CLASSIFIERS", "Terms",
    "ALGORITHMS", "Algorithm", "Batch",
    "data_plate", "MODELS", "fit", "train", "load",
    "build_model",
    "load_dataset", "Dataset", "load_config", "Config", "DataConfig", "ModelConfig", "TrainConfig", "make_elbo",
    "resolve_estimator", "ESTIMATORS", "Estimator", "elbo_per_datapoint", "objective_per_datapoint", "IWAE",
    "LatentScale", "elbo_terms", "dataset_elbo", "dataset_terms", "log_likelihood", "active_units",
    "kl_per_dimension", "evaluate", "evaluate_run", "build_optimizer", "Prior", "Likelihood", "PRIORS",
    "LIKELIHOODS", "ENCODERS", "DECODERS", "OPTIMIZERS", "PyrovaeError", "ConfigError", "DataError", "RunDirError",
    "TrackingError", "TrainingError", "Interrupted", "Callback", "CALLBACKS", "RunFolder", "TensorBoardLog",
    "MLflowLog",
    "PosteriorCollapseWarning",
    "WakeSleep", "MonteCarloEM", "hmc_log_likelihood",
]


def _public_imports():
    """``(module, name)`` of each public name, read from the ``TYPE_CHECKING`` block above (the one list)."""
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    block = next(node for node in tree.body
                 if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING")
    return [(node.module, alias.name) for node in block.body for alias in node.names]


def __getattr__(name: str):
    """The public API is imported at its first use, all of it at once (every registry filled, as an
    eager ``import pyrovae`` did), so that ``pyrovae --version`` and ``--help`` answer without
    loading torch and Pyro. A submodule (``pyrovae.data``) is imported when asked for."""
    if name.startswith("__"):
        raise AttributeError(f"module 'pyrovae' has no attribute {name!r}")
    if "MODELS" not in globals():
        for module, public in _public_imports():
            globals()[public] = getattr(importlib.import_module(module), public)
    if name in globals():
        return globals()[name]
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"module 'pyrovae' has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(__all__))
