"""pyrovae: Kingma & Welling's Auto-Encoding Variational Bayes as a declarative Pyro model.

Public API::

    Model          the base of every model family: a Pyro model and guide over a Batch
    VAE            the ``vae`` family (the default); CVAE, M2, HVAE: ``cvae``, ``m2``, ``hvae``
    MODELS         model families by name; PRIORS, LIKELIHOODS, ENCODERS, DECODERS, POSTERIORS, CLASSIFIERS,
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

from .algorithms import ALGORITHMS, Algorithm
from .amortized import AmortizedGuide
from .checkpoint import build_model, load
from .config import Config, DataConfig, ModelConfig, TrainConfig, load_config
from .data import Batch, Dataset, load_dataset
from .errors import ConfigError, DataError, PyrovaeError, RunDirError
from .estimators import ESTIMATORS, Estimator, resolve_estimator
from .evaluate import (
    active_units,
    dataset_elbo,
    dataset_terms,
    evaluate,
    evaluate_run,
    kl_per_dimension,
    log_likelihood,
)
from .likelihoods import LIKELIHOODS, Likelihood
from .loop import Callback, Interrupted, PosteriorCollapseWarning, TrainingError, fit
from .mcem import MonteCarloEM, hmc_log_likelihood
from .models import CVAE, HVAE, M2, MODELS, VAE, Model, Terms, data_plate
from .nets import CLASSIFIERS, DECODERS, ENCODERS
from .objectives import IWAE, LatentScale, elbo_per_datapoint, elbo_terms, make_elbo, objective_per_datapoint
from .optim import OPTIMIZERS, build_optimizer
from .posteriors import POSTERIORS
from .priors import PRIORS, Prior
from .train import RunFolder, TensorBoardLog, train
from .wake_sleep import WakeSleep

__version__ = "0.1.0"

__all__ = [
    "Model", "AmortizedGuide", "VAE", "CVAE", "M2", "HVAE", "POSTERIORS", "CLASSIFIERS", "Terms", "ALGORITHMS",
    "Algorithm", "Batch",
    "data_plate", "MODELS", "fit", "train", "load",
    "build_model",
    "load_dataset", "Dataset", "load_config", "Config", "DataConfig", "ModelConfig", "TrainConfig", "make_elbo",
    "resolve_estimator", "ESTIMATORS", "Estimator", "elbo_per_datapoint", "objective_per_datapoint", "IWAE",
    "LatentScale", "elbo_terms", "dataset_elbo", "dataset_terms", "log_likelihood", "active_units",
    "kl_per_dimension", "evaluate", "evaluate_run", "build_optimizer", "Prior", "Likelihood", "PRIORS",
    "LIKELIHOODS", "ENCODERS", "DECODERS", "OPTIMIZERS", "PyrovaeError", "ConfigError", "DataError", "RunDirError",
    "TrainingError", "Interrupted", "Callback", "RunFolder", "TensorBoardLog", "PosteriorCollapseWarning",
    "WakeSleep", "MonteCarloEM", "hmc_log_likelihood",
]
