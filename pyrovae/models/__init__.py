"""Model families: the :class:`Model` interface, its registry, and the families pyrovae ships."""

from pyrovae.models.base import Model
from pyrovae.models.cvae import CVAE
from pyrovae.models.hvae import HVAE
from pyrovae.models.m2 import M2
from pyrovae.models.registry import MODELS, check_model_options, family_defaults, takes_labels
from pyrovae.models.terms import DATA_PLATE, PARTICLE_PLATE, Terms, data_plate, log_mean_exp
from pyrovae.models.two_level import TwoLevelVAE
from pyrovae.models.vae import VAE

__all__ = ["Model", "Terms", "data_plate", "log_mean_exp", "DATA_PLATE", "PARTICLE_PLATE", "MODELS",
           "check_model_options", "family_defaults", "takes_labels", "VAE", "CVAE", "M2", "HVAE",
           "TwoLevelVAE"]
