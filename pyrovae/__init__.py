"""pyrovae: Kingma & Welling's Auto-Encoding Variational Bayes as a declarative Pyro model.

Public API::

    VAE            the model and guide (a PyroModule)
    fit, train     the SVI loop, and whole runs with their folders
    load           a trained VAE from a run folder
    load_dataset   data sets as tensors (digits, mnist, frey_face, file)
    load_config    TOML -> validated Config
    make_elbo      an estimator name -> a Pyro ELBO; IWAE, the importance-weighted bound
    log_likelihood importance-sampled log p(x); evaluate: every test number
    WakeSleep      the wake-sleep algorithm as a Pyro loss (train.algorithm = "wake_sleep")
    MonteCarloEM   Monte Carlo EM with per-datapoint HMC E-steps; hmc_log_likelihood
"""

from .checkpoint import build_vae, load
from .config import Config, DataConfig, ModelConfig, TrainConfig, load_config
from .data import Dataset, load_dataset
from .errors import ConfigError, DataError, PyrovaeError, RunDirError
from .evaluate import (
    active_units,
    dataset_elbo,
    dataset_terms,
    evaluate,
    evaluate_run,
    kl_per_dimension,
    log_likelihood,
)
from .likelihoods import LIKELIHOODS
from .mcem import MonteCarloEM, hmc_log_likelihood
from .model import VAE
from .nets import DECODERS, ENCODERS
from .objectives import IWAE, elbo_per_datapoint, elbo_terms, make_elbo, objective_per_datapoint, resolve_estimator
from .optim import OPTIMIZERS, build_optimizer
from .priors import PRIORS
from .train import Interrupted, PosteriorCollapseWarning, TrainingError, fit, train
from .wake_sleep import WakeSleep

__version__ = "0.1.0"

__all__ = [
    "VAE", "fit", "train", "load", "build_vae", "load_dataset", "Dataset", "load_config", "Config", "DataConfig",
    "ModelConfig", "TrainConfig", "make_elbo", "resolve_estimator", "elbo_per_datapoint", "objective_per_datapoint",
    "IWAE", "elbo_terms", "dataset_elbo", "dataset_terms", "log_likelihood", "active_units", "kl_per_dimension",
    "evaluate", "evaluate_run", "build_optimizer", "PRIORS", "LIKELIHOODS", "ENCODERS", "DECODERS", "OPTIMIZERS",
    "PyrovaeError", "ConfigError", "DataError", "RunDirError", "TrainingError", "Interrupted",
    "PosteriorCollapseWarning", "WakeSleep", "MonteCarloEM", "hmc_log_likelihood",
]
