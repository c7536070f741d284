"""AdaGrad (the paper's), RMSProp and Adam on the same VAE: test ELBO curves against training
samples in one plot (Kingma & Welling 2014, Figure 2 uses AdaGrad).

    python examples/optimizers.py --epochs 60
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402

import pyrovae  # noqa: E402

OPTIMIZERS = [{"name": "adagrad", "lr": 0.02}, {"name": "rmsprop", "lr": 1e-3}, {"name": "adam", "lr": 1e-3}]


def main(args):
    if args.smoke:
        args.epochs = 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = pyrovae.load_dataset(args.data, args.data_path)
    curves = {}
    for optim in OPTIMIZERS:
        pyro.set_rng_seed(args.seed)
        net = {"name": "mlp", "hidden": [args.hidden], "activation": "tanh"}
        vae = pyrovae.VAE(data.event_shape, args.latent_dim, encoder=net, decoder=net)
        metrics = pyrovae.fit(vae, data, epochs=args.epochs, batch_size=100, eval_every=1, seed=args.seed,
                              progress=False, optim=optim)
        curves[optim["name"]] = [(m["samples_seen"], m["train_elbo"], m["test_elbo"]) for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        seen, train, test = zip(*points)
        line, = ax.plot(seen, test, label=f"{name} (test)")
        ax.plot(seen, train, "--", color=line.get_color(), alpha=0.6, label=f"{name} (train)")
    ax.set_xscale("log")
    ax.set_xlabel("training samples evaluated")
    ax.set_ylabel("ELBO per datapoint (nats)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "optimizers.png", dpi=100)
    plt.close(fig)
    print("| optimizer | final test ELBO |")
    print("| --- | ---: |")
    for name, points in curves.items():
        print(f"| {name} | {points[-1][2]:.2f} |")
    (out / "curves.json").write_text(json.dumps(curves, indent=2) + "\n")
    print(f"outputs in {out}")
    return curves


def parser():
    p = argparse.ArgumentParser(description="AdaGrad, RMSProp and Adam on the same VAE")
    p.add_argument("-n", "--epochs", type=int, default=60)
    p.add_argument("-d", "--data", choices=["digits", "mnist"], default="digits")
    p.add_argument("--data-path", default=None)
    p.add_argument("-z", "--latent-dim", type=int, default=5)
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="runs/optimizers")
    p.add_argument("--smoke", action="store_true", help="a few seconds, for tests")
    return p


if __name__ == "__main__":
    main(parser().parse_args())
