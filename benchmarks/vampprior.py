"""The field's long runs at speed: the VampPrior paper's gated VAE, pyrovae against a hand-written loop.

The model is the one of examples/configs/field/vampprior_static_mnist.toml (Tomczak & Welling 2018):
784 -> two GatedDense layers of 300 -> (mu, hardtanh(log sigma^2, -6, 2)) of z in R^40 -> two GatedDense
layers of 300 -> 784 Bernoulli logits, the VampPrior with K = 500 pseudo-inputs kept in [0, 1], the
single-sample estimate (log p(x|z) + log p(z) - log q(z|x)) with a KL weight, Adam 5e-4, batch 100.

  (a) torch:    a hand-written PyTorch loop of that model (the paper's code, with the pseudo-inputs'
                encoder pass once per step and the mixture's log-density as torch writes it);
  (b) pyrovae:  ``pyrovae.fit`` on a ``pyrovae.VAE`` built from the same options, estimator ``mc``.

Both draw batches by index from one tensor. The loops alternate, their order rotating between
repeats; the table gives images per second (medians), an epoch's time (50,000 images), and the
ratio of the times within each repeat (then the median); ``--prior`` vamp and standard (the
default: both) time the model with the VampPrior and with the standard normal prior (the field's
first two rows). One torch thread by default, as the field's runs.

``--nll`` then times the final score, ``pyrovae.log_likelihood`` with K = 5000 importance
samples, on ``--nll-images`` test images against its floor: the time the decoder's matrix
products (40 -> 2 x 300 -> 2 x 300 -> 784 per sample) take at the matmul rate measured in the same
process on the same shapes; and against the model's floor, those and the VampPrior's own float64
product of [z^2, z, 1] with its 500 components' coefficients.

    python benchmarks/vampprior.py --nll --nll-images 20 --json benchmarks/latest-vampprior-cpu.json
    python benchmarks/vampprior.py --prior vamp --steps 50 --repeats 3
"""

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import pyrovae

ROOT = Path(__file__).resolve().parents[1]
STATIC_MNIST = ROOT.parent / "shared" / "data" / "static_mnist"
PIXELS, HIDDEN, LATENT, PSEUDO_INPUTS, BATCH, LR = 784, 300, 40, 500, 100, 5e-4
LOG_2PI = math.log(2 * math.pi)


def load_static_mnist():
    """Static MNIST's train and test splits as (N, 784) tensors, or a random stand-in of their shape."""
    if STATIC_MNIST.is_dir():
        data = pyrovae.load_dataset("static_mnist", str(STATIC_MNIST), download=False)
        return data.train.reshape(-1, PIXELS), data.test.reshape(-1, PIXELS), "static MNIST (../shared/data)"
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(60000, PIXELS, generator=g) < 0.13).float()
    return x[:50000], x[50000:], "random stand-in of static MNIST's shape"


# -- (a) hand-written PyTorch -------------------------------------------------------------------
class Gated(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.h, self.g = nn.Linear(n_in, n_out), nn.Linear(n_in, n_out)

    def forward(self, x):
        return self.h(x) * torch.sigmoid(self.g(x))


class TorchVampVAE(nn.Module):
    """The paper's gated VAE with its prior, written out."""

    def __init__(self, vamp: bool):
        super().__init__()
        self.q = nn.Sequential(Gated(PIXELS, HIDDEN), Gated(HIDDEN, HIDDEN))
        self.q_mean, self.q_logvar = nn.Linear(HIDDEN, LATENT), nn.Linear(HIDDEN, LATENT)
        self.p = nn.Sequential(Gated(LATENT, HIDDEN), Gated(HIDDEN, HIDDEN), nn.Linear(HIDDEN, PIXELS))
        self.pseudo_inputs = nn.Parameter(torch.rand(PSEUDO_INPUTS, PIXELS)) if vamp else None

    def encode(self, x):
        h = self.q(x)
        return self.q_mean(h), F.hardtanh(self.q_logvar(h), -6.0, 2.0)

    def log_p_z(self, z):
        if self.pseudo_inputs is None:
            return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
        mean, logvar = self.encode(F.hardtanh(self.pseudo_inputs, 0.0, 1.0))  # once per step
        z = z.unsqueeze(-2)  # (M, 1, D) against (K, D)
        log_comp = -0.5 * ((z - mean).pow(2) / logvar.exp() + logvar + LOG_2PI).sum(-1)
        return torch.logsumexp(log_comp, -1) - math.log(PSEUDO_INPUTS)

    def loss(self, x, beta):
        mean, logvar = self.encode(x)
        eps = torch.randn_like(mean)
        z = mean + eps * (0.5 * logvar).exp()
        log_q = -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(-1)
        log_px = -F.binary_cross_entropy_with_logits(self.p(z), x, reduction="none").sum(-1)
        return -(log_px + beta * (self.log_p_z(z) - log_q)).mean()


def run_torch(x, steps, vamp):
    model = TorchVampVAE(vamp)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    order = torch.randperm(x.shape[0])[:steps * BATCH]
    start = time.perf_counter()
    for index in order.split(BATCH):
        loss = model.loss(x[index], 0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return order.numel() / (time.perf_counter() - start)


# -- (b) pyrovae ----------------------------------------------------------------------------------
def pyrovae_model(vamp: bool):
    gated = {"name": "mlp", "hidden": [HIDDEN, HIDDEN], "activation": "gated"}
    prior = {"name": "vamp", "num_pseudo_inputs": PSEUDO_INPUTS, "pseudo_input_range": [0.0, 1.0]} if vamp \
        else "standard_normal"
    return pyrovae.VAE((PIXELS,), LATENT, prior=prior, likelihood="bernoulli",
                       encoder={**gated, "log_var_range": [-6.0, 2.0]}, decoder=gated)


def run_pyrovae(x, steps, vamp):
    vae = pyrovae_model(vamp)
    part = x[torch.randperm(x.shape[0])[:steps * BATCH]]
    data = pyrovae.Dataset("bench", part, part[:BATCH], "none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyrovae.PosteriorCollapseWarning)
        metrics = pyrovae.fit(vae, data, epochs=1, batch_size=BATCH, estimator="mc", progress=False,
                              kl_warmup_epochs=2, optim={"name": "adam", "lr": LR},
                              seed=int(torch.randint(2**30, ())))
    return part.shape[0] / metrics[-1]["train_seconds"]


# -- the final score against its floor ------------------------------------------------------------
def products_seconds(pairs, rows, samples):
    """The time of the matrix products ``a @ w.T`` of ``pairs`` (inputs of ``rows`` rows made
    beforehand) over ``samples`` samples in blocks of ``rows``, after one untimed block."""
    blocks = max(1, round(samples / rows))
    for a, w in pairs:
        a @ w.T
    start = time.perf_counter()
    for _ in range(blocks):
        for a, w in pairs:
            a @ w.T
    return (time.perf_counter() - start) * samples / (blocks * rows)


def decoder_matmul_seconds(vae, rows, samples):
    """The time of the decoder's matrix products alone (its five weight matrices, no bias, no gate,
    inputs made beforehand) over ``samples`` importance samples in blocks of ``rows``: the floor."""
    weights = [m.weight.detach() for m in vae.decoder.modules() if isinstance(m, nn.Linear)]
    return products_seconds([(torch.randn(rows, w.shape[1]), w) for w in weights], rows, samples)


def prior_matmul_seconds(vae, rows, samples):
    """The VampPrior's own matrix product over ``samples`` codes in blocks of ``rows``: [z^2, z, 1]
    (2D + 1 numbers a code) by the K components' coefficients, in float64 as
    ``DiagonalGaussianMixture`` computes it (exact where the expansion cancels in float32); 0 for
    a prior without one."""
    if not hasattr(vae.prior, "pseudo_inputs"):
        return 0.0
    weights = torch.randn(vae.prior.pseudo_inputs.shape[0], 2 * LATENT + 1, dtype=torch.float64)
    return products_seconds([(torch.randn(rows, 2 * LATENT + 1, dtype=torch.float64), weights)], rows, samples)


def time_log_likelihood(x_test, images, samples, vamp, repeats=5):
    """Medians over ``repeats``: log_likelihood's time on ``images`` points, the floor's (the
    decoder's products) and the model's floor (those and the prior's product), and the ratios."""
    vae = pyrovae_model(vamp)
    batch = min(100, images)
    rows = max(1, pyrovae.infer.evaluate.chunk_elements("cpu") // (batch * PIXELS)) * batch
    pyrovae.log_likelihood(vae, x_test[:2], num_samples=100)  # warm-up
    seconds, floors, prior_floors = [], [], []
    for _ in range(repeats):
        floors.append(decoder_matmul_seconds(vae, rows, images * samples))
        prior_floors.append(prior_matmul_seconds(vae, rows, images * samples))
        start = time.perf_counter()
        pyrovae.log_likelihood(vae, x_test[:images], num_samples=samples)
        seconds.append(time.perf_counter() - start)
    ratios = [s / f for s, f in zip(seconds, floors)]
    model_ratios = [s / (f + p) for s, f, p in zip(seconds, floors, prior_floors)]
    return {"nll_images": images, "nll_samples": samples, "nll_seconds": statistics.median(seconds),
            "nll_seconds_for_10000_images": statistics.median(seconds) * 10000 / images,
            "nll_floor_seconds": statistics.median(floors), "nll_over_floor": statistics.median(ratios),
            "nll_over_floor_all": ratios, "nll_prior_product_seconds": statistics.median(prior_floors),
            "nll_over_model_floor": statistics.median(model_ratios), "nll_block_rows": rows}


def compare_training(x, args, prior):
    """The two loops in alternating repeats: images per second, an epoch's time, the ratios."""
    vamp = prior == "vamp"
    loops = {"torch": run_torch, "pyrovae": run_pyrovae}
    for loop in loops.values():  # warm-up
        loop(x, max(2, args.steps // 10), vamp)
    runs = {name: [] for name in loops}
    names = list(loops)
    for repeat in range(args.repeats):
        k = repeat % len(names)
        for name in names[k:] + names[:k]:
            runs[name].append(loops[name](x, args.steps, vamp))
    med = {k: statistics.median(v) for k, v in runs.items()}
    paired = statistics.median(t / p for t, p in zip(runs["torch"], runs["pyrovae"]))
    out = {"steps_per_repeat": args.steps, "repeats": args.repeats,
           "torch_images_per_s": med["torch"], "pyrovae_images_per_s": med["pyrovae"],
           "torch_epoch_seconds": 50000 / med["torch"], "pyrovae_epoch_seconds": 50000 / med["pyrovae"],
           "pyrovae_vs_torch_time": med["torch"] / med["pyrovae"], "paired_pyrovae_vs_torch_time": paired,
           "all_runs": runs}
    print("\n| prior | torch img/s | pyrovae img/s | torch s/epoch | pyrovae s/epoch | pyrovae time / torch "
          "| median of per-repeat ratios |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {prior} | {med['torch']:,.0f} | {med['pyrovae']:,.0f} | {out['torch_epoch_seconds']:.1f} | "
          f"{out['pyrovae_epoch_seconds']:.1f} | {out['pyrovae_vs_torch_time']:.2f} | {paired:.2f} |")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", nargs="+", choices=["vamp", "standard"], default=["vamp", "standard"])
    parser.add_argument("--steps", type=int, default=100, help="steps per loop per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats (0: time no training)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the field's runs use 1)")
    parser.add_argument("--nll", action="store_true", help="also time log_likelihood against its floor")
    parser.add_argument("--nll-images", type=int, default=100)
    parser.add_argument("--nll-samples", type=int, default=5000)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, x_test, source = load_static_mnist()
    print(f"data: {source}; {torch.get_num_threads()} thread(s); torch {torch.__version__}; "
          f"{args.steps} steps of {BATCH} per loop per repeat")
    rows = []
    for prior in args.prior:
        torch.manual_seed(0)
        vamp = prior == "vamp"
        row = {"prior": prior, "batch_size": BATCH, "data": source, "threads": torch.get_num_threads(),
               "torch_version": torch.__version__, "python": platform.python_version(),
               "date": time.strftime("%Y-%m-%d")}
        if args.repeats:
            row.update(compare_training(x, args, prior))
        if args.nll:
            row.update(time_log_likelihood(x_test, args.nll_images, args.nll_samples, vamp))
            print(f"{prior}: log_likelihood, K = {row['nll_samples']}: {row['nll_images']} images in "
                  f"{row['nll_seconds']:.1f} s (10000 images: about {row['nll_seconds_for_10000_images'] / 60:.0f} "
                  f"min); the decoder's matrix products alone: {row['nll_floor_seconds']:.1f} s, so "
                  f"{row['nll_over_floor']:.2f}x the floor (repeats: "
                  f"{', '.join(f'{r:.2f}' for r in row['nll_over_floor_all'])}); with the prior's own "
                  f"product ({row['nll_prior_product_seconds']:.2f} s): {row['nll_over_model_floor']:.2f}x")
        rows.append(row)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
        print(f"\nwritten: {args.json}")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
