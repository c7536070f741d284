"""An epoch's held-out numbers (the record's ``test_*``, ``active_units`` and ``validation_*``),
computed under forked, seeded RNGs so that evaluating never moves the run's own draws."""

from typing import Any, Dict, Tuple

import torch

from pyrovae.infer.evaluate import accuracy, active_units, dataset_terms
from pyrovae.rng import seeded


def held_out_numbers(model, data, eval_particles: int, seed: int) -> Tuple[Dict[str, Any], torch.Tensor]:
    """``(numbers, activity)``: the test split's ELBO and its two terms (nats per point, ``eval_particles``
    draws each), the active units (Burda et al. 2015: Cov_x E_q[u] > 0.01) and the accuracy of a
    family that classifies; the validation split's ELBO and accuracy where there is one; and each
    latent unit's activity. The model is evaluated as it stands (the caller sets eval mode)."""
    test = data.test_split
    terms = dataset_terms(model, test, eval_particles, seed=seed)
    numbers = dict(test_elbo=terms["elbo"], test_reconstruction=terms["reconstruction"], test_kl=terms["kl"])
    with seeded(test, seed):  # a family's encode may sample (its guide's trace): never the run's RNG
        numbers["active_units"], activity = active_units(model, test)
        numbers["test_accuracy"] = accuracy(model, test)
    validation = data.validation_split
    if validation is not None:
        numbers["validation_elbo"] = dataset_terms(model, validation, eval_particles, seed=seed)["elbo"]
        with seeded(validation, seed):
            numbers["validation_accuracy"] = accuracy(model, validation)
    return numbers, activity
