"""Model families: the :class:`Model` interface, its registry, and the families pyrovae ships."""

from .base import DATA_PLATE, PARTICLE_PLATE, Model, Terms, data_plate, log_mean_exp
from .cvae import CVAE
from .hvae import HVAE
from .m2 import M2
from .registry import MODELS, check_model_options, family_defaults, takes_labels
from .vae import VAE

__all__ = ["Model", "Terms", "data_plate", "log_mean_exp", "DATA_PLATE", "PARTICLE_PLATE", "MODELS",
           "check_model_options", "family_defaults", "takes_labels", "VAE", "CVAE", "M2", "HVAE"]
