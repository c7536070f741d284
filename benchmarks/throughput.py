"""Training throughput: pyrovae against a hand-written PyTorch VAE and a classic Pyro SVI loop.

Loops train the same network (the PyTorch examples' MNIST VAE, 784-400-20, ReLU, Bernoulli
decoder) with the same batch size, optimizer (Adam 1e-3) and estimator, in one process, in
alternating repeats:

  (a) torch:       hand-written, BCE + closed-form KL (analytic) or + log q - log p (mc), as in
                   the PyTorch examples, with torch.optim.Adam's default (per-tensor) kernel;
  (a') torch_fused: the same loop with torch.optim.Adam(..., fused=True), the kernel pyrovae
                   picks on the CPU and CUDA (a reference: where pyrovae's lead over (a) comes from);
  (b) pyro:        the style of Pyro's VAE example: pyro.module, a plate over the batch,
                   SVI.step with pyro.optim.Adam and Trace_ELBO / TraceMeanField_ELBO;
  (c) pyrovae:     pyrovae.fit, its own training path.

All draw batches by index from one tensor (the DataLoader of the two examples would only slow
(a) and (b) down). The table gives images per second (medians over repeats, the loops' order
rotating between repeats), the ratios, the FLOPs per image of one training step and the
machine's measured matrix-multiply rate (the floor: the time a step would take if it did
nothing but its matrix multiplies). ``--quality-epochs E`` then trains (a), (b) and (c) for E
epochs each and compares their test ELBOs, computed the same way for all three, next to a
second run of (a) with another seed (the noise).

    python benchmarks/throughput.py --quick --json results.json
    python benchmarks/throughput.py --estimators analytic mc --batch-size 128 --repeats 7 --nll
"""

import argparse
import json
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from torch import nn
from torch.nn import functional as F

import pyrovae

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist" / "MNIST"
HIDDEN, LATENT, PIXELS = 400, 20, 784


def load_mnist(device):
    """Binarized MNIST as (60000, 784) training and (10000, 784) test tensors, or a random stand-in."""
    if SHARED_MNIST.is_dir():
        root = Path(tempfile.mkdtemp())
        shutil.copytree(SHARED_MNIST, root / "MNIST")
        data = pyrovae.load_dataset("mnist", str(root), binarize="threshold")
        shutil.rmtree(root)
        return (data.train.reshape(-1, PIXELS).to(device), data.test.reshape(-1, PIXELS).to(device),
                "MNIST (../shared/data), thresholded")
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(70000, PIXELS, generator=g) < 0.13).float().to(device)
    return x[:60000], x[60000:], "random stand-in of MNIST's shape"


# -- (a) hand-written PyTorch -------------------------------------------------------------------
class TorchVAE(nn.Module):
    """The PyTorch examples' VAE."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(PIXELS, HIDDEN), nn.Linear(HIDDEN, LATENT), nn.Linear(HIDDEN, LATENT)
        self.fc3, self.fc4 = nn.Linear(LATENT, HIDDEN), nn.Linear(HIDDEN, PIXELS)

    def encode(self, x):
        h = F.relu(self.fc1(x))
        return self.fc21(h), self.fc22(h)

    def decode(self, z):
        return self.fc4(F.relu(self.fc3(z)))

    def loss(self, x, estimator):
        mu, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        z = mu + eps * std
        logits = self.decode(z)
        bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        if estimator == "analytic":
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        else:  # log q(z|x) - log p(z), one sample
            kl = torch.sum(-0.5 * eps.pow(2) - 0.5 * logvar + 0.5 * z.pow(2))
        return (bce + kl) / x.shape[0]


def _order(x, images):
    """The training points of ``images`` steps' worth of data: whole epochs (each a fresh
    permutation of the N points), the last one cut short."""
    n = x.shape[0]
    return torch.cat([torch.randperm(n, device=x.device) for _ in range(-(-images // n))])[:images]


def run_torch(x, images, batch_size, estimator, particles, fused=False, x_test=None):
    """The hand-written loop over ``images`` points: (images per second, (encode, decode))."""
    model = TorchVAE().to(x.device)
    order = _order(x, images)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)
    start = time.perf_counter()
    for index in order.split(batch_size):
        xb = x[index]
        loss = sum(model.loss(xb, estimator) for _ in range(particles)) / particles
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(x)
    return order.numel() / (time.perf_counter() - start), (model.encode, model.decode)


def run_torch_fused(x, images, batch_size, estimator, particles, x_test=None):
    """(a) with ``torch.optim.Adam(..., fused=True)``: the kernel pyrovae picks."""
    return run_torch(x, images, batch_size, estimator, particles, fused=True)


# -- (b) classic Pyro, in the style of Pyro's VAE example ------------------------------------------
class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(PIXELS, HIDDEN), nn.Linear(HIDDEN, LATENT), nn.Linear(HIDDEN, LATENT)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        return self.fc21(h), torch.exp(0.5 * self.fc22(h))


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc3, self.fc4 = nn.Linear(LATENT, HIDDEN), nn.Linear(HIDDEN, PIXELS)

    def forward(self, z):
        return self.fc4(F.relu(self.fc3(z)))


class PyroVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = Encoder(), Decoder()

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], LATENT)))
            z = pyro.sample("latent", dist.Normal(z_loc, torch.ones_like(z_loc)).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def encode(self, x):
        """(loc, log sigma^2), the encoder's output in the other loops' terms."""
        loc, scale = self.encoder(x)
        return loc, 2 * scale.log()

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def run_pyro(x, images, batch_size, estimator, particles, x_test=None):
    order = _order(x, images)
    pyro.clear_param_store()
    vae = PyroVAE().to(x.device)
    cls = TraceMeanField_ELBO if estimator == "analytic" else Trace_ELBO
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
              cls(num_particles=particles, vectorize_particles=particles > 1))
    start = time.perf_counter()
    for index in order.split(batch_size):
        svi.step(x[index])
    _sync(x)
    return order.numel() / (time.perf_counter() - start), (vae.encode, vae.decoder)


# -- (c) pyrovae -------------------------------------------------------------------------------------
def run_pyrovae(x, images, batch_size, estimator, particles, x_test=None, precision="32"):
    """pyrovae.fit over ``images`` points: whole epochs of x, or one epoch of a random part of it
    (``precision``: train.precision)."""
    epochs, part = divmod(images, x.shape[0])
    if part:  # less than an epoch (the throughput repeats)
        x, epochs = x[torch.randperm(x.shape[0], device=x.device)[:images]], 1
    net = {"name": "mlp", "hidden": [HIDDEN], "activation": "relu"}
    vae = pyrovae.VAE((PIXELS,), LATENT, likelihood="bernoulli", encoder=net, decoder=net)
    data = pyrovae.Dataset("bench", x, x[:batch_size] if x_test is None else x_test, "none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyrovae.PosteriorCollapseWarning)
        metrics = pyrovae.fit(vae, data, epochs=epochs, batch_size=batch_size, estimator=estimator,
                              num_particles=particles, device=str(x.device), progress=False, eval_every=epochs,
                              optim={"name": "adam", "lr": 1e-3}, seed=int(torch.randint(2**30, ())),
                              precision=precision)
    seconds = sum(m["train_seconds"] for m in metrics)
    return images / seconds, (vae.encoder, lambda z: vae.decode(z)[0])


def heldout_elbo(codec, x_test, samples=10):
    """The test ELBO (nats per image) of a trained loop, the same computation for all: estimator B
    with the closed-form KL and ``samples`` draws of z per image, from a fixed seed."""
    encode, decode = codec
    generator = torch.Generator(device=x_test.device).manual_seed(0)
    total = 0.0
    with torch.no_grad():
        for xb in x_test.split(1000):
            mu, logvar = encode(xb)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
            eps = torch.randn((samples, *mu.shape), generator=generator, device=mu.device)
            logits = decode(mu + eps * (0.5 * logvar).exp())
            log_px = -F.binary_cross_entropy_with_logits(logits, xb.expand_as(logits), reduction="none").sum(-1)
            total += float((log_px.mean(0) - kl).sum())
    return total / x_test.shape[0]


def _sync(x):
    if x.device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_image():
    """Multiply-adds of the step's matrix multiplies, x2, forward and backward (x3)."""
    macs = PIXELS * HIDDEN + 2 * HIDDEN * LATENT + LATENT * HIDDEN + HIDDEN * PIXELS
    return 3 * 2 * macs


def matmul_rate(device, batch_size, seconds=1.0):
    """Measured FLOP/s of the step's largest matrix multiply shape."""
    a = torch.randn(batch_size, PIXELS, device=device)
    b = torch.randn(PIXELS, HIDDEN, device=device)
    for _ in range(5):
        a @ b
    _sync(a)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    _sync(a)
    return count * 2 * batch_size * PIXELS * HIDDEN / (time.perf_counter() - start)


def time_log_likelihood(x, images, samples, rate):
    """``pyrovae.log_likelihood`` with K = ``samples`` on ``images`` test images, against its floor: the
    time of the decoder's matrix products (20 -> 400 -> 784 per importance sample) at ``rate`` FLOP/s."""
    net = {"name": "mlp", "hidden": [HIDDEN], "activation": "relu"}
    vae = pyrovae.VAE((PIXELS,), LATENT, likelihood="bernoulli", encoder=net, decoder=net).to(x.device)
    start = time.perf_counter()
    pyrovae.log_likelihood(vae, x[:images], num_samples=samples)
    _sync(x)
    seconds = time.perf_counter() - start
    floor = images * samples * 2 * (LATENT * HIDDEN + HIDDEN * PIXELS) / rate
    return {"nll_images": images, "nll_samples": samples, "nll_seconds": seconds,
            "nll_seconds_for_10000_images": seconds * 10000 / images, "nll_floor_seconds": floor,
            "nll_over_floor": seconds / floor}


def memory_over_epochs(x, epochs, batch_size):
    """Resident memory (MiB) at the end of each epoch of one pyrovae run: it must not grow."""
    page = resource.getpagesize() / 2**20
    data = pyrovae.Dataset("bench", x[:20 * batch_size], x[:batch_size], "none")
    net = {"name": "mlp", "hidden": [HIDDEN], "activation": "relu"}
    vae = pyrovae.VAE((PIXELS,), LATENT, likelihood="bernoulli", encoder=net, decoder=net)
    samples, steps = [], []

    def each_step():  # fit polls this before every step
        steps.append(1)
        if len(steps) % 20 == 0:
            samples.append(int(Path("/proc/self/statm").read_text().split()[1]) * page)
        return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyrovae.PosteriorCollapseWarning)
        pyrovae.fit(vae, data, epochs=epochs + 1, batch_size=batch_size, device=str(x.device), progress=False,
                    eval_every=1, stop_signal=each_step)
    return samples  # one value per epoch, at its last step


def quality(x, x_test, args, estimator):
    """Test ELBO of (a), (b) and (c) after the same epochs, and of a second (a) with another seed."""
    images = args.quality_epochs * x.shape[0]
    elbos = {}
    for name, loop in (("torch", run_torch), ("pyro", run_pyro), ("pyrovae", run_pyrovae), ("torch_seed_2", run_torch)):
        torch.manual_seed(2 if name == "torch_seed_2" else 1)
        _, codec = loop(x, images, args.batch_size, estimator, args.particles, x_test=x_test)
        elbos[name] = heldout_elbo(codec, x_test)
    return {"quality_epochs": args.quality_epochs, "test_elbo": elbos}


def load_labelled_mnist(labels):
    """Thresholded MNIST as (N, 784) with its labels, ``labels`` of them usable (None: all); or a
    random stand-in of that shape."""
    if SHARED_MNIST.is_dir():
        root = Path(tempfile.mkdtemp())
        shutil.copytree(SHARED_MNIST, root / "MNIST")
        data = pyrovae.load_dataset("mnist", str(root), binarize="threshold", labeled=labels)
        shutil.rmtree(root)
        source = "MNIST (../shared/data), thresholded"
    else:
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(70000, PIXELS, generator=g) < 0.13).float()
        y = torch.randint(10, (70000,), generator=g)
        data = pyrovae.Dataset("stand-in", x[:60000], x[60000:], "none", y[:60000], y[60000:])
        if labels is not None:
            data.labeled = pyrovae.data.datasets.choose_labeled(data.train_y, labels)
        source = "random stand-in of MNIST's shape"
    flat = pyrovae.Dataset(data.name, data.train.reshape(-1, PIXELS), data.test.reshape(-1, PIXELS), "none",
                           data.train_y, data.test_y, data.labeled)
    return flat, source


def main_family(args):
    """``--family cvae | m2 | amortized``: see benchmarks/families.py."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import families

    data, source = load_labelled_mnist(args.labels if args.family == "m2" else None)
    print(f"data: {source}; {torch.get_num_threads()} threads; torch {torch.__version__}, pyro {pyro.__version__}")
    row = families.benchmark(args.family, data, args.steps, args.repeats, args.batch_size)
    ref = row["reference"]
    print(f"\n| family | {ref} img/s | pyrovae img/s | pyrovae time / {ref} | median of per-repeat ratios |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| {args.family}{' (%d labels)' % row['labels'] if row['labels'] else ''} | "
          f"{row[ref + '_images_per_s']:,.0f} | {row['pyrovae_images_per_s']:,.0f} | "
          f"{row['pyrovae_time_vs_reference']:.2f} | {row['paired_pyrovae_time_vs_reference']:.2f} |")
    row.update({"data": source, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
                "python": platform.python_version()})
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([row], indent=2) + "\n")
        print(f"\nwritten: {args.json}")
    return [row]


def main_precision(args):
    """pyrovae's training speed under each train.precision the device runs (float32, bf16-mixed,
    and on CUDA 16-mixed), alternating repeats, and the test ELBO each reaches after
    ``--quality-epochs`` epochs from the same seed."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/throughput.py: --device cuda asked for, but CUDA is not available")
    torch.manual_seed(0)
    x, x_test, source = load_mnist(device)
    precisions = ["32", "bf16-mixed"] + (["16-mixed"] if device.type == "cuda" else [])
    print(f"data: {source}; device: {device} ({torch.get_num_threads()} threads); torch {torch.__version__}")
    print(f"pyrovae.fit, model 784-{HIDDEN}-{LATENT}, batch {args.batch_size}, estimator analytic; "
          f"{args.repeats} alternating repeats of {args.steps} steps")
    images = args.steps * args.batch_size
    runs = {p: [] for p in precisions}
    for p in precisions:  # warm-up
        run_pyrovae(x, max(2, args.steps // 10) * args.batch_size, args.batch_size, "analytic", 1, precision=p)
    for repeat in range(args.repeats):
        k = repeat % len(precisions)
        for p in precisions[k:] + precisions[:k]:
            runs[p].append(run_pyrovae(x, images, args.batch_size, "analytic", 1, precision=p)[0])
    rows = []
    for p in precisions:
        paired = statistics.median(a / b for a, b in zip(runs[p], runs["32"]))
        rows.append({"precision": p, "images_per_s": statistics.median(runs[p]), "speed_vs_float32": paired,
                     "all_runs": runs[p], "device": str(device), "batch_size": args.batch_size, "data": source})
    if args.quality_epochs:
        for row in rows:
            torch.manual_seed(0)
            net = {"name": "mlp", "hidden": [HIDDEN], "activation": "relu"}
            vae = pyrovae.VAE((PIXELS,), LATENT, likelihood="bernoulli", encoder=net, decoder=net)
            data = pyrovae.Dataset("bench", x, x_test, "none")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", pyrovae.PosteriorCollapseWarning)
                metrics = pyrovae.fit(vae, data, epochs=args.quality_epochs, batch_size=args.batch_size,
                                      device=str(device), progress=False, eval_every=args.quality_epochs,
                                      precision=row["precision"], seed=0)
            row["test_elbo"], row["quality_epochs"] = metrics[-1]["test_elbo"], args.quality_epochs
    print()
    print("| precision | images/s | speed vs float32 (median of paired ratios) |"
          + (f" test ELBO after {args.quality_epochs} epochs |" if args.quality_epochs else ""))
    print("| --- | ---: | ---: |" + (" ---: |" if args.quality_epochs else ""))
    for r in rows:
        print(f"| {r['precision']} | {r['images_per_s']:,.0f} | {r['speed_vs_float32']:.2f} |"
              + (f" {r['test_elbo']:.2f} |" if args.quality_epochs else ""))
    if args.json:
        meta = {"python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
                "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([{**r, **meta} for r in rows], indent=2) + "\n")
        print(f"\nwritten: {args.json}")
    return rows


def main(args):
    if args.precision:
        return main_precision(args)
    if args.family != "vae":
        return main_family(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/throughput.py: --device cuda asked for, but CUDA is not available")
    torch.manual_seed(0)
    x, x_test, source = load_mnist(device)
    rate = matmul_rate(device, args.batch_size)
    fpi = flops_per_image()
    print(f"data: {source}; device: {device} ({torch.get_num_threads()} threads); torch {torch.__version__}, "
          f"pyro {pyro.__version__}")
    print(f"model 784-{HIDDEN}-{LATENT}, batch {args.batch_size}, Adam 1e-3, {args.particles} particle(s); "
          f"{fpi / 1e6:.2f} MFLOP per image per step; matmul rate {rate / 1e9:.1f} GFLOP/s, "
          f"floor {rate / fpi:,.0f} images/s")
    results = []
    loops = {"torch": run_torch, "torch_fused": run_torch_fused, "pyro": run_pyro, "pyrovae": run_pyrovae}
    images = args.steps * args.batch_size
    for estimator in args.estimators:
        runs = {name: [] for name in loops}
        for name, loop in loops.items():  # warm-up
            loop(x, max(2, args.steps // 10) * args.batch_size, args.batch_size, estimator, args.particles)
        rss, names = [], list(loops)
        for repeat in range(args.repeats):
            k = repeat % len(names)
            for name in names[k:] + names[:k]:  # rotate, so no loop always runs first
                runs[name].append(loops[name](x, images, args.batch_size, estimator, args.particles)[0])
            rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        med = {k: statistics.median(v) for k, v in runs.items()}
        row = {
            "device": str(device), "batch_size": args.batch_size, "estimator": estimator,
            "num_particles": args.particles, "steps_per_repeat": args.steps, "repeats": args.repeats,
            "torch_images_per_s": med["torch"], "torch_fused_images_per_s": med["torch_fused"],
            "pyro_images_per_s": med["pyro"], "pyrovae_images_per_s": med["pyrovae"],
            "pyrovae_vs_torch_time": med["torch"] / med["pyrovae"],
            "pyrovae_vs_torch_fused_time": med["torch_fused"] / med["pyrovae"],
            "pyrovae_vs_pyro_speedup": med["pyrovae"] / med["pyro"],
            # the same ratios taken within each repeat (the loops ran back to back) and then the
            # median: steadier than the ratio of medians when the machine's speed drifts
            "paired_pyrovae_vs_torch_time": statistics.median(t / c for t, c in zip(runs["torch"], runs["pyrovae"])),
            "paired_pyrovae_vs_pyro_speedup": statistics.median(c / b for c, b in zip(runs["pyrovae"], runs["pyro"])),
            "flops_per_image": fpi, "matmul_flops_per_s": rate, "floor_images_per_s": rate / fpi,
            "all_runs": runs, "peak_rss_mib_after_each_repeat": rss, "data": source,
        }
        if args.quality_epochs:
            row.update(quality(x, x_test, args, estimator))
        results.append(row)
    print()
    print("| estimator | torch img/s | torch, fused Adam | pyro img/s | pyrovae img/s | pyrovae time / torch "
          "| pyrovae time / torch fused | pyrovae speed-up vs pyro |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['estimator']} | {r['torch_images_per_s']:,.0f} | {r['torch_fused_images_per_s']:,.0f} | "
              f"{r['pyro_images_per_s']:,.0f} | {r['pyrovae_images_per_s']:,.0f} | {r['pyrovae_vs_torch_time']:.2f} | "
              f"{r['pyrovae_vs_torch_fused_time']:.2f} | {r['pyrovae_vs_pyro_speedup']:.2f} |")
    for r in results:
        print(f"{r['estimator']}: medians of the per-repeat ratios: pyrovae time / torch "
              f"{r['paired_pyrovae_vs_torch_time']:.2f}, pyrovae speed-up vs pyro "
              f"{r['paired_pyrovae_vs_pyro_speedup']:.2f}")
    if args.quality_epochs:
        print(f"\ntest ELBO after {args.quality_epochs} epoch(s) (nats per image; 'torch, seed 2' is a second "
              "hand-written run, the seed-to-seed noise):")
        print("| estimator | torch | torch, seed 2 | pyro | pyrovae |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for r in results:
            e = r["test_elbo"]
            print(f"| {r['estimator']} | {e['torch']:.2f} | {e['torch_seed_2']:.2f} | {e['pyro']:.2f} | "
                  f"{e['pyrovae']:.2f} |")
    extra = {}
    if args.memory_epochs:
        rss = memory_over_epochs(x, args.memory_epochs, args.batch_size)
        extra["rss_mib_per_epoch"] = rss
        print(f"\nresident memory at the end of epochs 1..{len(rss)}: " + ", ".join(f"{r:.0f}" for r in rss) + " MiB")
    if args.nll:
        extra.update(time_log_likelihood(x_test, args.nll_images, args.nll_samples, rate))
        print(f"\nlog_likelihood, K = {extra['nll_samples']}: {extra['nll_images']} images in "
              f"{extra['nll_seconds']:.1f} s (10000 images: about {extra['nll_seconds_for_10000_images']:.0f} s); "
              f"the decoder's matrix products at the matmul rate: {extra['nll_floor_seconds']:.1f} s, "
              f"so {extra['nll_over_floor']:.2f}x the floor")
    if args.json:
        meta = {"python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
                "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
        for r in results:
            r.update(meta)
            r.update(extra)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwritten: {args.json}")
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-b", "--batch-size", type=int, default=128)
    parser.add_argument("-e", "--estimators", nargs="+", choices=["analytic", "mc"], default=["analytic", "mc"])
    parser.add_argument("-p", "--particles", type=int, default=1)
    parser.add_argument("-d", "--device", default="cpu")
    parser.add_argument("-s", "--steps", type=int, help="steps per loop per repeat (100; --quick 40)")
    parser.add_argument("-r", "--repeats", type=int, help="alternating repeats (7; --quick 3)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer steps, repeats and epochs (about a minute on 2 CPUs)")
    parser.add_argument("--memory-epochs", type=int, help="epochs of the memory check (10; --quick 3; 0: none)")
    parser.add_argument("--quality-epochs", type=int,
                        help="train each loop this many epochs and compare test ELBOs (10; --quick 1; 0: skip)")
    parser.add_argument("--nll", action="store_true", help="also time log_likelihood")
    parser.add_argument("--nll-images", type=int, default=100)
    parser.add_argument("--nll-samples", type=int, default=5000)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--family", choices=["vae", "cvae", "m2", "amortized"], default="vae",
                        help="vae (the loops above); cvae, m2: against hand-written PyTorch loops of the same models; "
                             "amortized: a Pyro-only model with no guide, pyrovae against Pyro's SVI "
                             "(benchmarks/families.py)")
    parser.add_argument("--labels", type=int, default=3000, help="m2: the label budget (default 3000)")
    parser.add_argument("--precision", action="store_true",
                        help="pyrovae's speed and test ELBO under each train.precision the device runs (32, "
                             "bf16-mixed; 16-mixed on CUDA) instead of the loops above")
    args = parser.parse_args(argv)
    defaults = {"steps": (100, 40), "repeats": (7, 3), "memory_epochs": (10, 3), "quality_epochs": (10, 1)}
    for key, (full, quick) in defaults.items():  # what the command line left out
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    return args


if __name__ == "__main__":
    main(parse_args())
