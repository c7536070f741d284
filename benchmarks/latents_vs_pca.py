"""The data scientists bring, each trained with one setting: are the latents as useful as PCA's?

For each data set, pyrovae's default ``vae`` (2 latents, 50 epochs) trains with the one setting
its kind of data needs, and a logistic regression on the training points' posterior means
predicts the test points' labels; the same regression on PCA with as many components (fitted on
the training points as the model sees them) is the bar. The data:

- **wine**, **breast_cancer**: scikit-learn's bundled tables, raw (features in units of their
  own, up to 1680 and 4254), as ``.npz``; the setting: ``data.standardize = true`` (which also
  gives the Gaussian likelihood);
- **pbmc68k_reduced**: scanpy's bundled AnnData file (``scanpy/datasets/10x_pbmc68k_reduced.h5ad``,
  700 cells x 765 genes, labels ``obs/bulk_labels``), given with ``--h5ad``; the setting:
  ``data.standardize = true``;
- **digit_counts**: scikit-learn's digits as the counts they are (ink pixels per 4x4 block,
  0..16) in a uint8 ``.npy``; the setting: ``model.likelihood = "poisson"`` (uint8 values then
  reach it as counts).

    ./dev python benchmarks/latents_vs_pca.py --h5ad /path/to/10x_pbmc68k_reduced.h5ad \\
        --json benchmarks/latest-latents-vs-pca-cpu.json

prints a table (accuracy on the test split, the mean over ``--seeds``) and writes it as JSON.
"""

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyrovae  # noqa: E402


def tables(folder: Path):
    from sklearn.datasets import load_breast_cancer, load_digits, load_wine

    made = {}
    for name, load in (("wine", load_wine), ("breast_cancer", load_breast_cancer)):
        d = load()
        np.savez(folder / f"{name}.npz", x=d.data.astype(np.float32), y=d.target)
        made[name] = (["data.name=file", f"data.path={folder / f'{name}.npz'}"], "data.standardize=true")
    digits = load_digits()
    np.savez(folder / "digit_counts.npz", x=digits.data.astype(np.uint8), y=digits.target)
    made["digit_counts"] = (["data.name=file", f"data.path={folder / 'digit_counts.npz'}"],
                            "model.likelihood=poisson")
    return made


def split_arrays(split, labels):
    x = torch.cat([b.x.reshape(len(b), -1) for b in split.batches(4096)]).numpy()
    return x, labels.cpu().numpy()


def regression_accuracy(train_x, train_y, test_x, test_y) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    classifier.fit(train_x, train_y)
    return float(classifier.score(test_x, test_y))


def one(name, sets, setting, seed, folder: Path):
    from sklearn.decomposition import PCA

    config = pyrovae.load_config(None, [*sets, setting, f"train.seed={seed}", "train.progress=false",
                                        "train.eval_every=1000"])
    run = pyrovae.train(config, folder / f"{name}-{seed}")
    model = pyrovae.load(run).eval()
    data = config.load_data()
    train_x, train_y = split_arrays(data.train_split, data.train_split.labels)
    test_x, test_y = split_arrays(data.test_split, data.test_split.labels)
    with torch.no_grad():
        latents = [torch.cat([model.encode(b) for b in split.batches(4096)]).numpy()
                   for split in (data.train_split, data.test_split)]
    dims = latents[0].shape[1]
    pca = PCA(n_components=dims, random_state=seed).fit(train_x)
    return {"vae": regression_accuracy(latents[0], train_y, latents[1], test_y),
            "pca": regression_accuracy(pca.transform(train_x), train_y, pca.transform(test_x), test_y),
            "latent_dim": dims, "test_points": int(len(test_y))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--h5ad", help="scanpy's 10x_pbmc68k_reduced.h5ad (left out when not given)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        datasets = tables(folder)
        if args.h5ad:
            datasets["pbmc68k_reduced"] = (["data.name=file", f"data.path={args.h5ad}",
                                            "data.label_key=bulk_labels"], "data.standardize=true")
        for name, (sets, setting) in datasets.items():
            start = time.perf_counter()
            runs = [one(name, sets, setting, seed, folder) for seed in range(args.seeds)]
            rows[name] = {"setting": setting, "latent_dim": runs[0]["latent_dim"],
                          "test_points": runs[0]["test_points"],
                          "vae_accuracy": statistics.mean(r["vae"] for r in runs),
                          "pca_accuracy": statistics.mean(r["pca"] for r in runs),
                          "vae_runs": [r["vae"] for r in runs], "seconds": time.perf_counter() - start}
            rows[name]["difference"] = rows[name]["vae_accuracy"] - rows[name]["pca_accuracy"]
    print(f"{'data':<16} {'the one setting':<26} {'dim':>3} {'test':>5} {'vae':>6} {'pca':>6} {'vae-pca':>8}")
    for name, r in rows.items():
        print(f"{name:<16} {r['setting']:<26} {r['latent_dim']:>3} {r['test_points']:>5} {r['vae_accuracy']:>6.3f} "
              f"{r['pca_accuracy']:>6.3f} {r['difference']:>+8.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": platform.platform(), "torch": torch.__version__,
                                               "seeds": args.seeds, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
