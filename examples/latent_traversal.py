"""Latent traversals and interpolation: decode z while one latent dimension sweeps the prior's
range (the others held at an encoded image's code), and decode the straight line between two
encoded images.

    python examples/latent_traversal.py --epochs 60
"""

import argparse
from pathlib import Path

import pyro
import torch
from scipy.stats import norm

import pyrovae
from pyrovae.app.plots import as_images, save_image_rows


@torch.no_grad()
def traversals(vae, x, steps):
    """Row j: E[x|z] with z = mu(x) but for z_j, which runs over the N(0, 1) quantiles 5%..95%."""
    base = vae.encoder(x.unsqueeze(0))[0][0]
    values = torch.from_numpy(norm.ppf(torch.linspace(0.05, 0.95, steps).numpy())).float()
    z = base.repeat(vae.latent_dim, steps, 1)
    for j in range(vae.latent_dim):
        z[j, :, j] = values
    return vae.likelihood.mean(vae.decode(z.reshape(-1, vae.latent_dim)))


@torch.no_grad()
def interpolation(vae, a, b, steps):
    """E[x|z] along z = (1 - t) mu(a) + t mu(b), t from 0 to 1."""
    za, zb = vae.encoder(torch.stack([a, b]))[0]
    t = torch.linspace(0, 1, steps).unsqueeze(1)
    return vae.likelihood.mean(vae.decode((1 - t) * za + t * zb))


def main(args):
    if args.smoke:
        args.epochs = 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = pyrovae.load_dataset(args.data, args.data_path)
    pyro.set_rng_seed(args.seed)
    vae = pyrovae.VAE(data.event_shape, args.latent_dim)
    pyrovae.fit(vae, data, epochs=args.epochs, seed=args.seed, progress=False, optim={"name": "adam", "lr": 3e-3})
    panels = {"traversals.png": (traversals(vae, data.test[0], args.steps),
                                 f"each row sweeps one of the {args.latent_dim} latent dimensions"),
              "interpolation.png": (interpolation(vae, data.test[0], data.test[1], args.steps),
                                    "from one encoded test image to another")}
    for name, (images, title) in panels.items():
        rows = -(-images.shape[0] // args.steps)
        save_image_rows(out / name, [(as_images(images, vae.event_shape), title)], args.steps,
                        height=8 * rows / args.steps + 0.4)
    print(f"outputs in {out}")
    return {name: tuple(images.shape) for name, (images, _) in panels.items()}


def parser():
    p = argparse.ArgumentParser(description="Latent traversals and interpolation")
    p.add_argument("-n", "--epochs", type=int, default=60)
    p.add_argument("-d", "--data", choices=["digits", "mnist"], default="digits")
    p.add_argument("--data-path", default=None)
    p.add_argument("-z", "--latent-dim", type=int, default=4)
    p.add_argument("--steps", type=int, default=11)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="runs/latent_traversal")
    p.add_argument("--smoke", action="store_true", help="a few seconds, for tests")
    return p


if __name__ == "__main__":
    main(parser().parse_args())
