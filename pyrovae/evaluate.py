"""Evaluation of a trained VAE on held-out data.

Every number is in nats per datapoint; an ELBO is higher-is-better (the paper's "lower
bound per datapoint", Figure 2).
"""

import json
from pathlib import Path
from typing import Dict

import torch

from .checkpoint import load, read_run_config
from .data import load_dataset
from .objectives import elbo_per_datapoint


@torch.no_grad()
def dataset_elbo(vae, x: torch.Tensor, num_particles: int = 1, batch_size: int = 1000, seed: int = 0) -> float:
    """The mean ELBO per datapoint of x, (1/N) sum_i L(theta, phi; x_i), with estimator B where
    the prior allows it (else A), ``num_particles`` samples per point, in chunks of ``batch_size``.

    It draws from its own seeded generator state and restores the caller's, so evaluating
    never changes a training run's random stream and the same parameters give the same value.
    """
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        total = sum(float(elbo_per_datapoint(vae, chunk, num_particles).sum()) for chunk in x.split(batch_size))
    return total / x.shape[0]


def evaluate_run(run_dir, num_particles: int = 10, device: str = "cpu") -> Dict[str, float]:
    """Score a finished run on its test split and write ``evaluation.json`` into the run folder."""
    config = read_run_config(run_dir)
    vae = load(run_dir, device=device)
    d = config.data
    data = load_dataset(d.name, d.path, d.binarize, d.test_fraction, d.download, device=device)
    result = {
        "test_elbo": dataset_elbo(vae, data.test, num_particles),
        "elbo_particles": num_particles,
        "num_test": data.test.shape[0],
    }
    (Path(run_dir) / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
