"""Single-cell RNA counts: find cell types in a count matrix with a negative binomial decoder
whose size factor is each cell's observed total count, as in scVI (Lopez et al. 2018).

The matrix is synthetic, so the types are known: ``cells`` cells of ``types`` types over
``genes`` genes. Each type shifts the log-expression of a tenth of the genes by a normal
log-fold change (sd ``--fold-change``, 0.6 by default), each cell's library size (its total
count) is log-normal, and the counts are Gamma-Poisson (negative binomial) draws with a
dispersion per gene. The types are subtle and the depth varies four-fold, which is what real
data look like: PCA of log-normalized counts does poorly.

It trains four models of the same VAE (10 latents, a 128-unit encoder that reads
log(1 + counts), a 128-unit decoder) that differ only in the likelihood's name and options:

- ``negative_binomial`` with ``library = "observed"``: the decoder gives proportions, scaled
  by each cell's total count (scVI's model);
- ``zero_inflated_negative_binomial`` with ``library = "observed"`` (scVI's ZINB);
- ``poisson`` with ``library = "observed"``;
- ``negative_binomial`` with ``library = "learned"``: the decoder must also learn each cell's
  depth from z, so the depth takes latent room from the types.

Then k-means (k = ``types``) on the posterior means of every cell, scored by the adjusted Rand
index (ARI) against the true types, beside k-means on 10 principal components of the
log-normalized counts (log(1 + 10^4 x / total)). ``benchmarks/single_cell_vs_scvi.py`` runs the
first model against scvi-tools' SCVI on the same matrix.

    python examples/single_cell.py --epochs 100
"""

import argparse
import json
from pathlib import Path

import numpy as np
import pyro
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

import pyrovae

MODELS = [
    ("NB, observed library", {"name": "negative_binomial", "library": "observed"}),
    ("ZINB, observed library", {"name": "zero_inflated_negative_binomial", "library": "observed"}),
    ("Poisson, observed library", {"name": "poisson", "library": "observed"}),
    ("NB, learned library", {"name": "negative_binomial", "library": "learned"}),
]


def synthetic_counts(cells: int = 3000, genes: int = 1000, types: int = 5, fold_change: float = 0.6,
                     seed: int = 0):
    """A count matrix with known cell types: ``(counts (cells, genes) float32, types (cells,) int64)``.

    log rho_t = b + e_t (then normalized over genes): b_g ~ N(0, 1.5^2) a gene's baseline, e_t
    zero except on a random tenth of the genes, where e_tg ~ N(0, fold_change^2). A cell of
    type t has library size l ~ LogNormal(7, 0.5^2) and counts x_g ~ NB(mean l rho_tg,
    inverse dispersion theta_g), theta_g ~ LogNormal(log 2, 0.5^2).
    """
    rng = np.random.default_rng(seed)
    baseline = rng.normal(0.0, 1.5, genes)
    effect = np.zeros((types, genes))
    for t in range(types):
        markers = rng.choice(genes, genes // 10, replace=False)
        effect[t, markers] = rng.normal(0.0, fold_change, markers.size)
    log_rho = baseline + effect
    rho = np.exp(log_rho - log_rho.max(1, keepdims=True))
    rho /= rho.sum(1, keepdims=True)
    kind = rng.integers(0, types, cells)
    library = np.exp(rng.normal(7.0, 0.5, cells))
    theta = np.exp(rng.normal(np.log(2.0), 0.5, genes))
    mean = library[:, None] * rho[kind]
    counts = rng.poisson(rng.gamma(theta, mean / theta))  # the Gamma-Poisson mixture: NB(mean, theta)
    return torch.from_numpy(counts.astype(np.float32)), torch.from_numpy(kind).long()


def cluster_ari(features, types, k: int, seed: int = 0) -> float:
    """ARI of k-means (k clusters, 10 restarts) on ``features`` against the true ``types``."""
    found = KMeans(k, n_init=10, random_state=seed).fit_predict(np.asarray(features, dtype=np.float64))
    return float(adjusted_rand_score(np.asarray(types), found))


def log_normalized_pca(counts, components: int = 10, seed: int = 0):
    """The baseline's features: PCA of log(1 + 10^4 x / total), the usual single-cell preprocessing."""
    x = np.asarray(counts, dtype=np.float64)
    normalized = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4)
    return PCA(components, random_state=seed).fit_transform(normalized)


def count_vae(genes: int, likelihood, latent_dim: int = 10, hidden: int = 128) -> pyrovae.VAE:
    """The VAE of this example: log(1 + x) into a 128-unit encoder, 10 latents, a 128-unit decoder."""
    return pyrovae.VAE((genes,), latent_dim, likelihood=likelihood,
                       encoder={"name": "mlp", "hidden": [hidden], "input": "log1p"},
                       decoder={"name": "mlp", "hidden": [hidden]})


def train_and_cluster(counts, types, likelihood, epochs: int, seed: int, k: int, batch_size: int = 128,
                      learning_rate: float = 1e-3) -> dict:
    """Train the example's VAE with ``likelihood`` on 90% of the cells (10% held out for the test
    ELBO); return its test ELBO and the ARI of k-means on every cell's posterior mean."""
    held_out = torch.randperm(len(counts), generator=torch.Generator().manual_seed(seed))[: len(counts) // 10]
    train_mask = torch.ones(len(counts), dtype=torch.bool)
    train_mask[held_out] = False
    data = pyrovae.Dataset("synthetic_counts", counts[train_mask], counts[held_out],
                           train_y=types[train_mask], test_y=types[held_out])
    pyro.set_rng_seed(seed)
    vae = count_vae(counts.shape[1], likelihood)
    history = pyrovae.fit(vae, data, epochs=epochs, batch_size=batch_size, seed=seed, progress=False,
                          eval_every=epochs, optim={"name": "adam", "lr": learning_rate})
    latents = vae.encode(counts)
    return {"test_elbo": history[-1]["test_elbo"], "ari": cluster_ari(latents, types, k, seed),
            "latents": latents}


def main(args):
    if args.smoke:
        args.cells, args.genes, args.epochs = 300, 100, 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    counts, types = synthetic_counts(args.cells, args.genes, args.types, args.fold_change, args.seed)
    results = [{"method": "PCA of log-normalized counts (10 components)", "test_elbo": None,
                "ari": cluster_ari(log_normalized_pca(counts, seed=args.seed), types, args.types, args.seed)}]
    for label, likelihood in MODELS:
        found = train_and_cluster(counts, types, likelihood, args.epochs, args.seed, args.types)
        results.append({"method": label, "test_elbo": found["test_elbo"], "ari": found["ari"]})
    print(f"{args.cells} cells x {args.genes} genes, {args.types} types, {args.epochs} epochs, seed {args.seed}")
    print("| method | test ELBO (nats per cell) | k-means ARI |")
    print("| --- | ---: | ---: |")
    for r in results:
        elbo = "" if r["test_elbo"] is None else f"{r['test_elbo']:.1f}"
        print(f"| {r['method']} | {elbo} | {r['ari']:.3f} |")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"outputs in {out}")
    return results


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cells", type=int, default=3000)
    p.add_argument("--genes", type=int, default=1000)
    p.add_argument("--types", type=int, default=5)
    p.add_argument("--fold-change", type=float, default=0.6, help="sd of a marker gene's log-fold change")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    p.add_argument("-o", "--out", default="examples/out/single_cell")
    p.add_argument("--smoke", action="store_true", help="a tiny matrix and one epoch, for the test suite")
    return p


if __name__ == "__main__":
    main(parser().parse_args())
