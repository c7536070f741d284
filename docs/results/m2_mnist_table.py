"""Build docs/results/m2_mnist.csv from M2 run folders (one per label budget).

    for L in 100 600 1000 3000; do   # the config: 100 labelled + 100 other points per minibatch, balanced weight
      pyrovae train examples/configs/m2_mnist.toml --set data.path=DATA --set data.labeled=$L \
          --set train.epochs=20 --set optim.lr=0.001 --out runs/m2-$L --threads 1
      pyrovae train --out runs/m2-$L --resume --set train.epochs=40 --threads 1
    done
    python docs/results/m2_mnist_table.py runs/m2-100 runs/m2-600 runs/m2-1000 runs/m2-3000 > docs/results/m2_mnist.csv

test_error is 100 * (1 - test_accuracy) of the last epoch's evaluation (argmax_y q(y | x) on
MNIST's 10000 test images); paper_test_error is Kingma et al. (2014), Table 1, M2.
"""

import json
import sys
from pathlib import Path

import pyrovae

PAPER = {100: 11.97, 600: 4.94, 1000: 3.60, 3000: 3.92}


def row(run: Path) -> dict:
    config = pyrovae.load_config(str(run / "config.toml"))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in metrics if m["test_accuracy"] is not None][-1]
    labels = config.data.labeled
    at_20 = next((m for m in metrics if m["epoch"] == 20 and m["test_accuracy"] is not None), None)
    return {"labels": labels, "test_error": round(100 * (1 - last["test_accuracy"]), 2),
            "paper_test_error": PAPER.get(labels, ""), "epochs": last["epoch"],
            "test_error_after_20_epochs": "" if at_20 is None else round(100 * (1 - at_20["test_accuracy"]), 2),
            "seed": config.train.seed,
            "lr": config.optim.get("lr", ""), "minutes": round(sum(m["train_seconds"] for m in metrics) / 60, 1),
            "test_elbo_unlabelled": round(last["test_elbo"], 2), "batch_size": config.train.batch_size,
            "labeled_per_batch": config.train.labeled_per_batch, "labeled_weight": config.train.labeled_weight}


def main(runs) -> None:
    rows = sorted((row(Path(r)) for r in runs), key=lambda r: r["labels"])
    print(",".join(rows[0]))
    for r in rows:
        print(",".join(str(v) for v in r.values()))


if __name__ == "__main__":
    main(sys.argv[1:])
