"""Cell types found by pyrovae's negative binomial VAE against scvi-tools' SCVI, side by side.

For each seed, one synthetic count matrix with known types (``examples/single_cell.py``'s
``synthetic_counts``: 3,000 cells x 1,000 genes, 5 types by default). On it:

- **pyrovae**: the example's VAE with ``likelihood = { name = "negative_binomial", library =
  "observed" }`` and ``encoder = { name = "mlp", hidden = [128], input = "log1p" }``, 10 latents;
- **SCVI**: ``scvi.model.SCVI(adata, n_latent=10)`` at its defaults (128 hidden units, a
  zero-inflated NB with a dispersion per gene, the observed library size), the same epochs;
- **PCA**: 10 components of the log-normalized counts.

Both VAEs train for ``--epochs`` epochs (batch 128, Adam 1e-3) on 90% of the cells, and
k-means (k = types, 10 restarts) on every cell's posterior mean is scored by the adjusted Rand
index against the true types. scvi-tools is not a dependency of pyrovae: it runs in a child
process under ``--scvi-python`` (a Python that can ``import scvi``; default this one), which
reads the matrix from a file and writes the latents back.

    ./dev python benchmarks/single_cell_vs_scvi.py --scvi-python /path/to/scvi-env/bin/python \\
        --json benchmarks/latest-single-cell-cpu.json
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

SCVI_CHILD = """
import sys, time
import numpy as np
import torch
torch.set_num_threads(int(sys.argv[5]))
import anndata, scvi
counts = np.load(sys.argv[1])
scvi.settings.seed = int(sys.argv[4])
adata = anndata.AnnData(X=counts)
scvi.model.SCVI.setup_anndata(adata)
model = scvi.model.SCVI(adata, n_latent=10)
start = time.perf_counter()
model.train(max_epochs=int(sys.argv[3]), accelerator="cpu", batch_size=128, enable_progress_bar=False)
seconds = time.perf_counter() - start
np.save(sys.argv[2], model.get_latent_representation())
print(f"{scvi.__version__} {seconds}")
"""


def run_scvi(python: str, counts: torch.Tensor, epochs: int, seed: int, threads: int) -> tuple:
    """SCVI's latents for ``counts`` (trained in a child process under ``python``), its version and
    training seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        matrix, latents = Path(tmp) / "counts.npy", Path(tmp) / "latents.npy"
        np.save(matrix, counts.numpy())
        done = subprocess.run([python, "-c", SCVI_CHILD, str(matrix), str(latents), str(epochs), str(seed),
                               str(threads)], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"single_cell_vs_scvi: SCVI under {python} failed:\n{done.stderr[-3000:]}")
        version, seconds = done.stdout.split()[-2:]
        return np.load(latents), version, float(seconds)


def main(args):
    sys.path.insert(0, str(ROOT / "examples"))
    from single_cell import MODELS, cluster_ari, log_normalized_pca, synthetic_counts, train_and_cluster

    torch.set_num_threads(args.threads)
    likelihood = dict(MODELS)["NB, observed library"]
    rows = []
    for seed in args.seeds:
        counts, types = synthetic_counts(args.cells, args.genes, args.types, args.fold_change, seed)
        pca = cluster_ari(log_normalized_pca(counts, seed=seed), types, args.types, seed)
        start = time.perf_counter()
        ours = train_and_cluster(counts, types, likelihood, args.epochs, seed, args.types)
        pyrovae_seconds = time.perf_counter() - start
        latents, version, scvi_seconds = run_scvi(args.scvi_python, counts, args.epochs, seed, args.threads)
        rows.append({"seed": seed, "pca_ari": pca, "pyrovae_ari": ours["ari"],
                     "scvi_ari": cluster_ari(latents, types, args.types, seed), "pyrovae_seconds": pyrovae_seconds,
                     "scvi_seconds": scvi_seconds, "scvi_version": version})
        print(f"seed {seed}: PCA {pca:.3f}, pyrovae {rows[-1]['pyrovae_ari']:.3f}, SCVI {rows[-1]['scvi_ari']:.3f}",
              flush=True)
    print(f"\n{args.cells} cells x {args.genes} genes, {args.types} types, {args.epochs} epochs, "
          f"{args.threads} torch thread(s), scvi-tools {rows[0]['scvi_version']}")
    print("| seed | PCA ARI | pyrovae NB observed ARI | SCVI ARI | pyrovae - SCVI | pyrovae s | SCVI s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['seed']} | {r['pca_ari']:.3f} | {r['pyrovae_ari']:.3f} | {r['scvi_ari']:.3f} | "
              f"{r['pyrovae_ari'] - r['scvi_ari']:+.3f} | {r['pyrovae_seconds']:.0f} | {r['scvi_seconds']:.0f} |")
    summary = {key: statistics.mean(r[key] for r in rows) for key in ("pca_ari", "pyrovae_ari", "scvi_ari")}
    summary["pyrovae_minus_scvi"] = summary["pyrovae_ari"] - summary["scvi_ari"]
    print(f"| mean | {summary['pca_ari']:.3f} | {summary['pyrovae_ari']:.3f} | {summary['scvi_ari']:.3f} | "
          f"{summary['pyrovae_minus_scvi']:+.3f} | | |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "machine": platform.machine(), "torch": torch.__version__, "cells": args.cells, "genes": args.genes,
            "types": args.types, "fold_change": args.fold_change, "epochs": args.epochs, "threads": args.threads,
            "rows": rows, "mean": summary}, indent=2) + "\n")
    return rows


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=3000)
    p.add_argument("--genes", type=int, default=1000)
    p.add_argument("--types", type=int, default=5)
    p.add_argument("--fold-change", type=float, default=0.6)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--scvi-python", default=sys.executable, help="a Python that can import scvi (scvi-tools)")
    p.add_argument("--json", help="write the rows and their means here")
    return p


if __name__ == "__main__":
    main(parser().parse_args())
