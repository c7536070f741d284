"""Anomaly detection with a VAE: train on digits without one class, then score the test
digits by their importance-sampled log-likelihood and by their ELBO; the held-out class should
score lower. Reports the ROC AUC of -score for telling the held-out class apart, and plots the
score histograms.

    python examples/anomaly_detection.py --held-out 8 --epochs 80
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

import pyrovae  # noqa: E402
from pyrovae.data.datasets import binarize_split  # noqa: E402


def main(args):
    if args.smoke:
        args.epochs, args.nll_samples = 1, 20
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    x = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)
    y = torch.from_numpy(digits.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    n_test = len(y) // 4
    train = x[n_test:][y[n_test:] != args.held_out]  # the model never sees the held-out class
    test, anomalous = binarize_split(x[:n_test], "dynamic"), (y[:n_test] == args.held_out).numpy()
    data = pyrovae.Dataset("digits", train, test, "dynamic")

    pyro.set_rng_seed(args.seed)
    vae = pyrovae.VAE(data.event_shape, args.latent_dim)
    pyrovae.fit(vae, data, epochs=args.epochs, seed=args.seed, progress=False, optim={"name": "adam", "lr": 3e-3})
    with torch.no_grad():
        scores = {"log-likelihood": pyrovae.log_likelihood(vae, test, num_samples=args.nll_samples).numpy(),
                  "ELBO": pyrovae.elbo_per_datapoint(vae, test, num_particles=10).numpy()}
    auc = {name: float(roc_auc_score(anomalous, -s)) for name, s in scores.items()}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, (name, s) in zip(axes, scores.items()):
        ax.hist(s[~anomalous], bins=40, alpha=0.6, density=True, label="classes seen in training")
        ax.hist(s[anomalous], bins=40, alpha=0.6, density=True, label=f"held-out digit {args.held_out}")
        ax.set_xlabel(f"{name} (nats)")
        ax.set_title(f"{name}: ROC AUC {auc[name]:.3f}", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scores.png", dpi=100)
    plt.close(fig)
    for name, value in auc.items():
        print(f"ROC AUC by {name}: {value:.3f}")
    (out / "auc.json").write_text(json.dumps({"held_out": args.held_out, "roc_auc": auc}, indent=2) + "\n")
    print(f"outputs in {out}")
    return auc


def parser():
    p = argparse.ArgumentParser(description="Anomaly detection by log-likelihood and ELBO")
    p.add_argument("--held-out", type=int, default=8, choices=range(10))
    p.add_argument("-n", "--epochs", type=int, default=80)
    p.add_argument("-z", "--latent-dim", type=int, default=8)
    p.add_argument("--nll-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="runs/anomaly_detection")
    p.add_argument("--smoke", action="store_true", help="a few seconds, for tests")
    return p


if __name__ == "__main__":
    main(parser().parse_args())
