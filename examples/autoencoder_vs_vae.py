"""A deterministic autoencoder, trained on reconstruction error alone, against the VAE with the
same networks: reconstructions, images decoded from z ~ N(0, I), and the latent codes' spread.

Without the KL term nothing ties the autoencoder's codes to N(0, I): they sit wherever the
encoder puts them, off-centre and at any scale, so prior samples can fall where the decoder was
never trained. The VAE's KL term pulls q(z|x) towards the prior (codes centred, spread about
1), so prior samples land where the decoder has learned to draw digits.

    python examples/autoencoder_vs_vae.py --epochs 60
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

import pyrovae  # noqa: E402
from pyrovae.app.plots import as_images, image_grid  # noqa: E402


def train_autoencoder(vae, data, epochs, lr, batch_size=100):
    """Minimise -log p(x | z = mu(x)) alone: the VAE's networks used as a plain autoencoder."""
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    for _ in range(epochs):
        for index in torch.randperm(data.num_train).split(batch_size):
            x = data.train_points(index)
            loss = -vae.likelihood_dist(vae.encoder(x)[0]).log_prob(x).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def main(args):
    if args.smoke:
        args.epochs = 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = pyrovae.load_dataset("digits")
    models = {}
    pyro.set_rng_seed(args.seed)
    models["autoencoder"] = pyrovae.VAE(data.event_shape, 2)
    train_autoencoder(models["autoencoder"], data, args.epochs, args.learning_rate)
    pyro.set_rng_seed(args.seed)
    models["vae"] = pyrovae.VAE(data.event_shape, 2)
    pyrovae.fit(models["vae"], data, epochs=args.epochs, seed=args.seed, progress=False,
                optim={"name": "adam", "lr": args.learning_rate})

    # the codes of all digits, coloured by their label (the held-out split is fixed: recompute it)
    images = torch.from_numpy(load_digits().images).float().div(16).unsqueeze(1)
    labels = load_digits().target
    fig, axes = plt.subplots(2, 3, figsize=(11, 6.5), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    spread = {}
    x = data.test[:10]
    for row, (name, vae) in enumerate(models.items()):
        with torch.no_grad():
            codes = vae.encoder(images)[0]
        spread[name] = {"code_mean": codes.mean(0).tolist(), "code_std": codes.std(0).tolist()}
        ax = axes[row, 0]
        ax.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="tab10", s=4)
        ax.set_title(f"{name}: codes E[z|x], std {codes.std(0).numpy().round(2)}", fontsize=9)
        pyro.set_rng_seed(args.seed)
        for col, (title, shown) in enumerate((("test data / reconstructions", torch.cat([x, vae.reconstruct(x)])),
                                              ("decoded from z ~ N(0, I)", vae.sample(20))), start=1):
            axes[row, col].imshow(image_grid(as_images(shown, vae.event_shape), 10), cmap="gray", vmin=0, vmax=1)
            axes[row, col].set_axis_off()
            axes[row, col].set_title(f"{name}: {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "autoencoder_vs_vae.png", dpi=100)
    plt.close(fig)
    for name, s in spread.items():
        print(f"{name:12s} code std per dimension: {[round(v, 2) for v in s['code_std']]}, "
              f"mean: {[round(v, 2) for v in s['code_mean']]}")
    (out / "spread.json").write_text(json.dumps(spread, indent=2) + "\n")
    print(f"outputs in {out}")
    return spread


def parser():
    p = argparse.ArgumentParser(description="A plain autoencoder against the VAE")
    p.add_argument("-n", "--epochs", type=int, default=60)
    p.add_argument("-lr", "--learning-rate", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="runs/autoencoder_vs_vae")
    p.add_argument("--smoke", action="store_true", help="a few seconds, for tests")
    return p


if __name__ == "__main__":
    main(parser().parse_args())
