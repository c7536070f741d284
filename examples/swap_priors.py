"""Swap the prior by name: one data set, one network, four priors (Kingma & Welling's N(0, I),
a learned Gaussian mixture, the VampPrior, a normalizing flow), compared on test ELBO and test
NLL, with samples from each side by side.

    python examples/swap_priors.py --epochs 60
"""

import argparse
import json
from pathlib import Path

import pyro

import pyrovae
from pyrovae.app.plots import as_images, save_image_rows

PRIORS = ["standard_normal", {"name": "mixture", "num_components": 10}, {"name": "vamp", "num_pseudo_inputs": 50},
          {"name": "flow", "num_flows": 2, "hidden": [64]}]


def main(args):
    if args.smoke:
        args.epochs, args.nll_samples = 1, 20
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = pyrovae.load_dataset(args.data, args.data_path)
    rows, results = [], []
    for prior in PRIORS:
        name = prior if isinstance(prior, str) else prior["name"]
        pyro.set_rng_seed(args.seed)
        vae = pyrovae.VAE(data.event_shape, args.latent_dim, prior=prior, likelihood="bernoulli")
        pyrovae.fit(vae, data, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, progress=False,
                    optim={"name": "adam", "lr": args.learning_rate})
        scores = pyrovae.evaluate(vae, data.test, nll_samples=args.nll_samples, iwae_samples=10, elbo_particles=5)
        results.append({"prior": name, "estimator": pyrovae.resolve_estimator("auto", vae),
                        "test_elbo": scores["test_elbo"], "test_nll": scores["test_nll"],
                        "active_units": scores["active_units"]})
        pyro.set_rng_seed(args.seed)
        rows.append(as_images(vae.sample(args.num_samples), vae.event_shape))
    print("| prior | estimator | test ELBO | test NLL | active units |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['prior']} | {r['estimator']} | {r['test_elbo']:.2f} | {r['test_nll']:.2f} | {r['active_units']} |")
    save_image_rows(out / "samples_by_prior.png",
                    [(images, f"{r['prior']}: test NLL {r['test_nll']:.1f}") for images, r in zip(rows, results)],
                    args.num_samples, height=1.2)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"outputs in {out}")
    return results


def parser():
    p = argparse.ArgumentParser(description="Swap the prior by name")
    p.add_argument("-n", "--epochs", type=int, default=60)
    p.add_argument("-d", "--data", choices=["digits", "mnist"], default="digits")
    p.add_argument("--data-path", default=None)
    p.add_argument("-z", "--latent-dim", type=int, default=2)
    p.add_argument("-b", "--batch-size", type=int, default=100)
    p.add_argument("-lr", "--learning-rate", type=float, default=3e-3)
    p.add_argument("--nll-samples", type=int, default=1000)
    p.add_argument("--num-samples", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="runs/swap_priors")
    p.add_argument("--smoke", action="store_true", help="a few seconds, for tests")
    return p


if __name__ == "__main__":
    main(parser().parse_args())
