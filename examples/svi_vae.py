"""The shortest complete pyrovae script: its model and guide trained with plain ``pyro.infer.SVI``.

Estimator A (``--estimator mc``, Pyro's Trace_ELBO) or estimator B (``--estimator analytic``,
TraceMeanField_ELBO, closed-form KL) of Kingma & Welling (2014), on the bundled digits or on
MNIST (``--data mnist --data-path ROOT``).

    python examples/svi_vae.py --epochs 20
"""

import argparse
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam

import pyrovae
from pyrovae.app.plots import save_grid


def main(args):
    if args.smoke:
        args.epochs = 1
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    data = pyrovae.load_dataset(args.data, args.data_path)
    vae = pyrovae.VAE(data.event_shape, latent_dim=args.latent_dim, prior=args.prior, likelihood="bernoulli")
    elbo = {"mc": Trace_ELBO, "analytic": TraceMeanField_ELBO}[args.estimator]()
    svi = SVI(vae.model, vae.guide, Adam({"lr": args.learning_rate}), elbo)

    n = data.num_train
    for epoch in range(1, args.epochs + 1):
        total = 0.0
        for index in torch.randperm(n).split(args.batch_size):
            total += svi.step(data.train_points(index), num_data=n)  # the minibatch's log-probs are scaled by N/M
        test_elbo = pyrovae.dataset_elbo(vae, data.test)
        print(f"epoch {epoch:3d}  train ELBO {-total / (n * -(-n // args.batch_size)):9.3f}  "
              f"test ELBO {test_elbo:9.3f} nats per datapoint")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_grid(out / "samples.png", vae.sample(64), vae.event_shape, 8, "E[x | z], z ~ N(0, I)")
    print(f"outputs in {out}")
    return test_elbo


def parser():
    p = argparse.ArgumentParser(description="A pyrovae VAE trained with plain Pyro SVI")
    p.add_argument("-n", "--epochs", type=int, default=20)
    p.add_argument("-e", "--estimator", choices=["mc", "analytic"], default="analytic")
    p.add_argument("-d", "--data", choices=["digits", "mnist"], default="digits")
    p.add_argument("--data-path", default=None, help="torchvision root folder for MNIST")
    p.add_argument("-p", "--prior", default="standard_normal", help="a registered prior name")
    p.add_argument("-z", "--latent-dim", type=int, default=2)
    p.add_argument("-b", "--batch-size", type=int, default=100)
    p.add_argument("-lr", "--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="runs/svi_vae")
    p.add_argument("--smoke", action="store_true", help="one epoch, for tests")
    return p


if __name__ == "__main__":
    main(parser().parse_args())
