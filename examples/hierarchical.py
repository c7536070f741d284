"""One stochastic layer against two, and the Gaussian posterior against IAF, at an equal budget.

Four models trained for the same epochs on the same data and scored by test NLL
(importance-sampled, nats) and the bounds ELBO <= IWAE_k <= log p(x):

- ``vae``: one stochastic layer, q(z | x) a diagonal Gaussian (Kingma & Welling 2014);
- ``vae`` + ``iaf``: the same with an inverse autoregressive flow posterior (Kingma et al. 2016);
- ``hvae``: two stochastic layers z2 -> z1 -> x (Burda et al. 2016's architecture);
- ``hvae`` + ``iaf``.

The one-layer models get Burda et al.'s one-layer architecture (two hidden layers of 200 tanh
units each side), so the comparison is about the second stochastic layer.

    python examples/hierarchical.py --epochs 100
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402

import pyrovae  # noqa: E402
from pyrovae.app.plots import save_figure  # noqa: E402

TANH_200 = {"name": "mlp", "hidden": [200, 200], "activation": "tanh"}


def systems(args):
    iaf = {"name": "iaf", "num_flows": 2, "hidden": [2 * args.latent_dim]}
    one = {"name": "vae", "latent_dim": args.latent_dim, "encoder": TANH_200, "decoder": TANH_200}
    two = {"name": "hvae", "latent_dim": args.latent_dim, "latent_dim2": args.latent_dim2}
    return {"vae": one, "vae + iaf": {**one, "posterior": iaf}, "hvae": two, "hvae + iaf": {**two, "posterior": iaf}}


def main(args):
    if args.smoke:
        args.epochs, args.nll_samples = 1, 20
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = pyrovae.load_dataset(args.data, args.data_path)
    rows, curves = [], {}
    for label, spec in systems(args).items():
        pyro.set_rng_seed(args.seed)
        model = pyrovae.MODELS.build(spec, "model", event_shape=data.event_shape)
        metrics = pyrovae.fit(model, data, epochs=args.epochs, seed=args.seed, progress=False,
                              eval_every=max(1, args.epochs // 10), optim={"name": "adam", "lr": args.learning_rate})
        scores = pyrovae.evaluate(model, data.test_batch, nll_samples=args.nll_samples, iwae_samples=50,
                                  elbo_particles=10, seed=args.seed)
        curves[label] = [(m["epoch"], m["test_elbo"]) for m in metrics if m["test_elbo"] is not None]
        rows.append({"model": label, "estimator": pyrovae.resolve_estimator("auto", model, data.test_batch[:2]),
                     "test_elbo": scores["test_elbo"], "test_iwae50": scores["test_iwae"],
                     "test_nll": scores["test_nll"], "active_units": scores["active_units"],
                     "parameters": sum(p.numel() for p in model.parameters()), "epochs": args.epochs})
    print("| model | estimator | test ELBO | test IWAE_50 | test NLL | active units | parameters |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['estimator']} | {r['test_elbo']:.2f} | {r['test_iwae50']:.2f} | "
              f"{r['test_nll']:.2f} | {r['active_units']} | {r['parameters']} |")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, points in curves.items():
        ax.plot(*zip(*points), marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test ELBO (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out / "hierarchical.png")
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def parser():
    p = argparse.ArgumentParser(description="One stochastic layer against two; Gaussian posterior against IAF")
    p.add_argument("-n", "--epochs", type=int, default=100)
    p.add_argument("-d", "--data", choices=["digits", "mnist"], default="digits")
    p.add_argument("--data-path", default=None)
    p.add_argument("-z", "--latent-dim", type=int, default=16, help="z (one layer) and z1 (two layers)")
    p.add_argument("--latent-dim2", type=int, default=8, help="z2, the top layer")
    p.add_argument("-lr", "--learning-rate", type=float, default=1e-3)
    p.add_argument("--nll-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="runs/hierarchical")
    p.add_argument("--smoke", action="store_true", help="a few seconds, for tests")
    return p


if __name__ == "__main__":
    main(parser().parse_args())
