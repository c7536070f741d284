"""Semi-supervised learning with M2 (Kingma, Rezende, Mohamed & Welling 2014): a classifier
learned from a few labels and many unlabelled points, its test accuracy against the number of
labels.

For each label budget K, ``data.labeled = K`` keeps K training labels (balanced per class); the
``m2`` family sums the class out of every unlabelled point's ELBO and adds alpha * log q(y | x)
on the labelled ones. Every minibatch holds 50 labelled points beside 50 others, and the
labelled data weigh as much as the unlabelled (``train.labeled_per_batch``,
``train.labeled_weight = "balanced"``: with the objective as written and uniform minibatches the
few labels barely steer the classifier), and the images are thresholded once (``--binarize``;
a dynamically binarized 8x8 digit is a fresh random image at each step and one random draw at
test, and the classifier then sees noise). As a baseline, the same classifier network trained
on the K labelled points alone (plain cross-entropy, the same number of steps, the same images)
shows what the unlabelled data add.

    python examples/semi_supervised.py --epochs 100                       # digits
    python examples/semi_supervised.py -d mnist --data-path DATA --labels 100 600 1000 3000 --epochs 300
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

import pyrovae  # noqa: E402
from pyrovae.app.plots import save_figure  # noqa: E402
from pyrovae.parts.nets import CLASSIFIERS  # noqa: E402


def supervised_only(data, steps: int, hidden, lr: float, seed: int) -> float:
    """The test accuracy of the classifier network trained on the labelled points alone."""
    torch.manual_seed(seed)
    net = CLASSIFIERS.build({"name": "mlp", "hidden": hidden}, event_shape=data.event_shape,
                            num_classes=data.num_classes)
    x, y = data.train[data.labeled], data.train_y[data.labeled]
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        x_step = torch.bernoulli(x) if data.binarize == "dynamic" else x  # the draw M2's steps see
        torch.nn.functional.cross_entropy(net(x_step), y).backward()
        optimizer.step()
    with torch.no_grad():
        return float((net(data.test).argmax(-1) == data.test_y).float().mean())


def plot_accuracy(rows, path) -> None:
    """Test accuracy against the number of labels, M2 beside the classifier on the labels alone."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["labels"] for r in rows], [100 * r["m2_accuracy"] for r in rows], "o-", label="M2")
    ax.plot([r["labels"] for r in rows], [100 * r["supervised_only_accuracy"] for r in rows], "s--",
            label="classifier on the labels alone")
    ax.set_xscale("log")
    ax.set_xticks([r["labels"] for r in rows], [str(r["labels"]) for r in rows])
    ax.minorticks_off()
    ax.set_xlabel("labelled training points")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def main(args):
    if args.smoke:
        args.epochs, args.labels = 2, [50]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for labels in args.labels:
        data = pyrovae.load_dataset(args.data, args.data_path, binarize=args.binarize, labeled=labels)
        pyro.set_rng_seed(args.seed)
        model = pyrovae.M2(data.event_shape, data.num_classes, latent_dim=args.latent_dim,
                           classifier={"name": "mlp", "hidden": args.hidden},
                           encoder={"name": "mlp", "hidden": args.hidden},
                           decoder={"name": "mlp", "hidden": args.hidden})
        metrics = pyrovae.fit(model, data, epochs=args.epochs, seed=args.seed, progress=False,
                              batch_size=args.batch_size, eval_every=args.epochs,
                              labeled_per_batch=args.labeled_per_batch, labeled_weight=args.labeled_weight,
                              optim={"name": "adam", "lr": args.learning_rate})
        steps = metrics[-1]["step"]
        rows.append({"labels": labels, "m2_accuracy": metrics[-1]["test_accuracy"],
                     "supervised_only_accuracy": supervised_only(data, steps, args.hidden, args.learning_rate,
                                                                 args.seed),
                     "test_elbo": metrics[-1]["test_elbo"], "epochs": args.epochs, "steps": steps})
    print("| labels | M2 test accuracy | classifier on the labels alone | test ELBO (labels withheld) |")
    print("| ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['labels']} | {100 * r['m2_accuracy']:.1f} % | {100 * r['supervised_only_accuracy']:.1f} % "
              f"| {r['test_elbo']:.2f} |")
    plot_accuracy(rows, out / "accuracy_vs_labels.png")
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def parser():
    p = argparse.ArgumentParser(description="M2: accuracy against the number of labels")
    p.add_argument("-n", "--epochs", type=int, default=100)
    p.add_argument("-d", "--data", choices=["digits", "mnist"], default="digits")
    p.add_argument("--data-path", default=None)
    p.add_argument("--binarize", choices=["threshold", "dynamic"], default="threshold",
                   help="fixed images (m2's default under a label budget) or a fresh draw at every step")
    p.add_argument("--labels", type=int, nargs="+", default=[20, 50, 100, 300])
    p.add_argument("-z", "--latent-dim", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[256])
    p.add_argument("-b", "--batch-size", type=int, default=100)
    p.add_argument("--labeled-per-batch", type=int, default=50,
                   help="labelled points drawn into every minibatch (train.labeled_per_batch; 0: uniform minibatches)")
    p.add_argument("--labeled-weight", default="balanced", type=lambda v: v if v == "balanced" else float(v),
                   help="how many times a labelled point counts (train.labeled_weight; 'balanced': as much as "
                        "the unlabelled data together; 1: the objective as written)")
    p.add_argument("-lr", "--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="runs/semi_supervised")
    p.add_argument("--smoke", action="store_true", help="a few seconds, for tests")
    return p


if __name__ == "__main__":
    main(parser().parse_args())
