"""A conditional VAE (Sohn et al. 2015): samples drawn for each class, one row per digit.

The ``cvae`` family reads the label in both networks, p(x | z, y) and q(z | x, y). To check
that a row of samples really shows its digit, a classifier trained on the real training images
(scikit-learn's logistic regression) labels the samples: the fraction it assigns to the class
they were drawn for is printed beside the test ELBO (chance is 10 %).

    python examples/conditional_vae.py --epochs 100
"""

import argparse
import json
import warnings
from pathlib import Path

import pyro
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

import pyrovae
from pyrovae.app.plots import save_grid


def sample_accuracy(data, samples, labels) -> float:
    """The fraction of samples that a classifier of the real training images gives their label."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(max_iter=300).fit(data.train.flatten(1).numpy(), data.train_y.numpy())
    predicted = clf.predict(samples.flatten(1).numpy())
    return float((torch.from_numpy(predicted) == labels).float().mean())


def main(args):
    if args.smoke:
        args.epochs, args.per_class = 2, 3
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = pyrovae.load_dataset(args.data, args.data_path)
    pyro.set_rng_seed(args.seed)
    model = pyrovae.CVAE(data.event_shape, data.num_classes, latent_dim=args.latent_dim)
    pyrovae.fit(model, data, epochs=args.epochs, seed=args.seed, progress=False,
                optim={"name": "adam", "lr": args.learning_rate})
    test_elbo = pyrovae.dataset_elbo(model, data.test_batch, num_particles=10)
    pyro.set_rng_seed(args.seed)
    labels = torch.arange(data.num_classes).repeat_interleave(args.per_class)
    samples = model.sample(len(labels), y=labels)
    save_grid(out / "cvae_samples.png", samples, data.event_shape, args.per_class,
              "cvae: E[x | z, y], z ~ p(z); row k has y = k")
    result = {"test_elbo": test_elbo, "sample_accuracy": sample_accuracy(data, samples, labels),
              "epochs": args.epochs, "latent_dim": args.latent_dim}
    print(f"test ELBO {result['test_elbo']:.2f} nats; samples classified as their label: "
          f"{100 * result['sample_accuracy']:.1f} % (chance 10 %)")
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def parser():
    p = argparse.ArgumentParser(description="A conditional VAE: samples per class")
    p.add_argument("-n", "--epochs", type=int, default=100)
    p.add_argument("-d", "--data", choices=["digits", "mnist"], default="digits")
    p.add_argument("--data-path", default=None)
    p.add_argument("-z", "--latent-dim", type=int, default=2)
    p.add_argument("-lr", "--learning-rate", type=float, default=3e-3)
    p.add_argument("--per-class", type=int, default=10, help="samples per class (one row each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="runs/conditional_vae")
    p.add_argument("--smoke", action="store_true", help="a few seconds, for tests")
    return p


if __name__ == "__main__":
    main(parser().parse_args())
