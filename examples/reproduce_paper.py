"""Reproduce Kingma & Welling (2014): AEVB against wake-sleep and Monte Carlo EM, Figures 2 to 5.

- ``--figure 2``: the variational lower bound per datapoint, train and test, against the
  number of training samples evaluated, for AEVB and wake-sleep, one panel per latent
  dimension Nz (MNIST: 500 tanh hidden units, Bernoulli decoder; Frey Face: 200 hidden
  units, Gaussian decoder with sigmoid means), Adagrad, M = 100, L = 1.
- ``--figure 3``: the marginal log-likelihood on MNIST (Nz = 3, 100 hidden units) with
  N_train = 1000 and 50000, for AEVB, wake-sleep and Monte Carlo EM (HMC E-steps), every
  system's log p(x) estimated by the same HMC-fitted importance sampler.
- ``--figure 4``: learned 2-D manifolds of MNIST and Frey Face.
- ``--figure 5``: random samples of MNIST models with Nz = 2, 5, 10, 20.

Each (system, Nz) trains in its own pyrovae run folder under ``OUT``; a run that exists is
resumed (a larger ``--samples`` continues it) and a finished one is reused, so figures can
be redrawn and budgets raised without retraining. Outputs: a CSV of (system, Nz, samples,
train bound, test bound), the figure as PNG in the paper's layout, and a table of measured
values beside the values read off the paper's figures.

    python examples/reproduce_paper.py --figure 2 --data ROOT --samples 1e7 --nz 5 10 20 200
    python examples/reproduce_paper.py --figure 2 --dataset frey_face --data frey_rawface.mat --nz 2 5
    python examples/reproduce_paper.py --figure 3 --data ROOT --samples 1e6
    python examples/reproduce_paper.py --smoke      # every figure on the bundled digits, tiny budget
"""

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

import pyrovae
from pyrovae.app.checkpoint import read_checkpoint
from pyrovae.app.plots import as_images, plot_manifold, plt, save_image_rows
from pyrovae.infer.hmc import hmc_log_likelihood
from pyrovae.training.mcem import MonteCarloEM

# Values read off the paper's figures (about +-0.5 nats for MNIST, +-15 for Frey Face).
REFERENCE_MNIST = {  # Nz: AEVB test bound at 1e6, 1e7 samples, at the end (~2.5e8); wake-sleep at the end
    3: (None, -138.0, -133.6, -138.5), 5: (-141.0, -124.0, -118.9, -121.0), 10: (-130.0, -108.0, -103.4, -106.0),
    20: (-125.0, -104.0, -99.4, -103.8), 200: (-121.0, -103.0, -99.5, -103.4),
}
REFERENCE_FREY = {2: (930, 872), 5: (1230, 1115), 10: (1456, 1312), 20: (1480, 1316)}  # AEVB train / test at 1e8
REFERENCE_FIGURE3 = {  # N_train: system -> (train, test) marginal log-likelihood at ~6e7 samples
    1000: {"aevb": (-109.1, -143.2), "wake_sleep": (-125.5, -144.8), "mcem": (-109.0, -141.5)},
    50000: {"aevb": (-130.9, -137.9), "wake_sleep": (-136.8, -141.0), "mcem": (-147.0, -148.4)},
}
SYSTEM_NAMES = {"aevb": "AEVB", "wake_sleep": "wake-sleep", "mcem": "MCEM"}
COLORS = {"aevb": "tab:red", "wake_sleep": "tab:green", "mcem": "tab:blue"}
CONFIGS = Path(__file__).parent / "configs"


# -- configs and runs ------------------------------------------------------------------------
def paper_overrides(dataset: str, args) -> list:
    """The paper's setup for a data set (Sec. 5): networks, Adagrad, weight decay, M = 100, L = 1."""
    common = ["train.batch_size=100", "train.num_particles=1", "train.estimator='analytic'", "train.progress=false",
              f"train.seed={args.seed}", f"train.device='{args.device}'"]
    if dataset == "mnist":  # examples/configs/mnist.toml is the paper's MNIST setup
        return common + [f"data.path='{args.data}'"]
    if dataset == "frey_face":
        return common + [f"data.path='{args.data}'", "optim.name='adagrad'", f"optim.lr={args.frey_lr}",
                         "optim.weight_decay=5.6e-4",  # 1/N: the N(0, I) prior on the parameters
                         "model.encoder={name='mlp', hidden=[200], activation='tanh', init_std=0.01}",
                         "model.decoder={name='mlp', hidden=[200], activation='tanh', init_std=0.01}"]
    return common + ["optim.name='adagrad'", "optim.lr=0.05",  # digits: the smoke test's stand-in
                     "model.encoder={name='mlp', hidden=[100], activation='tanh', init_std=0.01}",
                     "model.decoder={name='mlp', hidden=[100], activation='tanh', init_std=0.01}"]


def run_config(dataset: str, system: str, nz: int, epochs: int, args, extra=()) -> pyrovae.Config:
    base = CONFIGS / f"{dataset}.toml"
    # eval_every: about 33 test evaluations per run, and always after the last epoch
    overrides = paper_overrides(dataset, args) + [
        f"model.latent_dim={nz}", f"train.algorithm='{system}'", f"train.epochs={epochs}",
        f"train.eval_every={max(1, round(epochs / 33))}", *extra]
    return pyrovae.load_config(str(base), overrides)


def read_metrics(run_dir: Path) -> list:
    path = run_dir / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except ValueError:  # a line torn by a kill; the next resume rewrites the file from the checkpoint
            pass
    return records


def ensure_run(config: pyrovae.Config, run_dir: Path, train: bool = True) -> list:
    """Train, resume or reuse the run in ``run_dir``; return its metrics (``train=False``:
    the metrics as they are, none for a missing run)."""
    if not train:
        return [r for r in read_metrics(run_dir) if r["epoch"] <= config.train.epochs]
    if (run_dir / "config.toml").exists():  # a run folder: resume it (from the start if it has no checkpoint yet)
        checkpoint = run_dir / "checkpoint.pt"
        done = read_checkpoint(checkpoint)["counters"]["epoch"] if checkpoint.exists() else 0
        if done < config.train.epochs:
            print(f"resuming {run_dir} at epoch {done} of {config.train.epochs}", flush=True)
            pyrovae.train(config, run_dir, resume=True)
    else:
        print(f"training {run_dir}: {config.train.epochs} epochs", flush=True)
        pyrovae.train(config, run_dir)
    return [r for r in read_metrics(run_dir) if r["epoch"] <= config.train.epochs]


def epochs_for(samples: float, num_train: int) -> int:
    return max(1, math.ceil(samples / num_train))


def num_train(dataset: str, args) -> int:
    if dataset == "mnist":
        return 60000  # without loading it
    return pyrovae.load_dataset(dataset, args.data if dataset != "digits" else None).num_train


# -- Figure 2 ------------------------------------------------------------------------------
def figure2(args, out: Path) -> list:
    dataset = args.dataset
    n = num_train(dataset, args)
    epochs = epochs_for(args.samples, n)
    rows = []
    for nz in args.nz:
        for system in args.systems:
            if system == "mcem":
                continue  # Figure 2 compares AEVB and wake-sleep
            run_dir = out / "figure2" / dataset / f"{system}-nz{nz}"
            metrics = ensure_run(run_config(dataset, system, nz, epochs, args), run_dir, not args.no_train)
            rows += [{"system": system, "nz": nz, "samples": r["samples_seen"], "train_bound": r["train_elbo"],
                      "test_bound": r["test_elbo"]} for r in metrics]
    stem = out / f"figure2-{dataset}"
    write_csv(stem.with_suffix(".csv"), rows)
    draw_bound_curves(stem.with_suffix(".png"), rows, dataset)
    print(figure2_table(rows, dataset))
    return rows


def write_csv(path: Path, rows: list) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


def draw_bound_curves(path: Path, rows: list, dataset: str) -> None:
    """One panel per Nz with shared axes, log x axis; train dashed, test solid; AEVB red,
    wake-sleep green (the paper's layout)."""
    nzs = sorted({r["nz"] for r in rows})
    fig, axes = plt.subplots(1, len(nzs), figsize=(3.2 * len(nzs), 3.4), squeeze=False, sharex=True, sharey=True)
    handles = {}
    for ax, nz in zip(axes[0], nzs):
        for system in SYSTEM_NAMES:
            pts = [r for r in rows if r["nz"] == nz and r["system"] == system]
            for key, style in (("train_bound", "--"), ("test_bound", "-")):
                xy = [(r["samples"], r[key]) for r in pts if r[key] is not None]
                if xy:
                    label = f"{SYSTEM_NAMES[system]} {key.split('_')[0]}"
                    handles[label], = ax.plot(*zip(*xy), style, color=COLORS[system], marker=".", markersize=3)
        ax.set_xscale("log")
        ax.set_title(f"{dataset}, $N_z = {nz}$")
        ax.set_xlabel("# training samples evaluated")
        ax.grid(alpha=0.3)
    # like the paper's axes: from where the lowest curve settles (its 10th percentile) to the top
    series = {(r["system"], r["nz"]) for r in rows}
    values = {s: [r[k] for r in rows if (r["system"], r["nz"]) == s for k in ("train_bound", "test_bound")
                  if r[k] is not None] for s in series}
    low = min(np.percentile(v, 10) for v in values.values() if v)
    high = max(max(v) for v in values.values() if v)
    axes[0, 0].set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    axes[0, 0].set_ylabel("lower bound per datapoint (nats)")
    fig.legend(handles.values(), handles.keys(), fontsize=8, loc="upper center", ncol=len(handles))
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def at_samples(rows: list, system: str, nz: int, samples: float, key: str = "test_bound"):
    """``(value, samples)``: ``key`` at ``samples`` training samples, interpolated linearly in
    log(samples) between the two evaluations around it; the last evaluation if it lies
    within 5% short of ``samples``; ``(None, None)`` if the run has not got that far."""
    pts = [(r["samples"], r[key]) for r in rows if r["system"] == system and r["nz"] == nz and r[key] is not None]
    after = [p for p in pts if p[0] >= samples]
    before = [p for p in pts if p[0] < samples]
    if not after:
        return (before[-1][1], before[-1][0]) if before and before[-1][0] >= samples / 1.05 else (None, None)
    if not before or after[0][0] == samples:
        return (after[0][1], after[0][0]) if after[0][0] <= 1.05 * samples else (None, None)
    (s0, v0), (s1, v1) = before[-1], after[0]
    t = math.log(samples / s0) / math.log(s1 / s0)
    return v0 + t * (v1 - v0), samples


def _fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def figure2_table(rows: list, dataset: str) -> str:
    end = max(r["samples"] for r in rows)
    lines = [f"Figure 2, {dataset}: test lower bound per datapoint (nats); paper values in brackets", ""]
    if dataset == "mnist":
        lines += ["| Nz | AEVB at 1e6 | AEVB at 1e7 | AEVB at end | wake-sleep at end | end (samples) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for nz in sorted({r["nz"] for r in rows}):
            ref = REFERENCE_MNIST.get(nz, (None,) * 4)
            cells = [f"{_fmt(at_samples(rows, 'aevb', nz, s)[0])} [{_fmt(p)}]"
                     for s, p in ((1e6, ref[0]), (1e7, ref[1]))]
            cells.append(f"{_fmt(at_samples(rows, 'aevb', nz, end)[0])} [{_fmt(ref[2])} at 2.5e8]")
            cells.append(f"{_fmt(at_samples(rows, 'wake_sleep', nz, end)[0])} [{_fmt(ref[3])} at 2.5e8]")
            lines.append(f"| {nz} | " + " | ".join(cells) + f" | {end:.3g} |")
    else:
        lines += ["| Nz | system | train at end | test at end | paper AEVB train / test at 1e8 | end (samples) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for nz in sorted({r["nz"] for r in rows}):
            for system in SYSTEM_NAMES:
                test, _ = at_samples(rows, system, nz, end)
                if test is None:
                    continue
                train, _ = at_samples(rows, system, nz, end, "train_bound")
                ref = REFERENCE_FREY.get(nz) if dataset == "frey_face" and system == "aevb" else None
                paper = f"{ref[0]} / {ref[1]}" if ref else ("about 580" if dataset == "frey_face" else "-")
                lines.append(f"| {nz} | {SYSTEM_NAMES[system]} | {_fmt(train)} | {_fmt(test)} | {paper} | {end:.3g} |")
    return "\n".join(lines)


# -- Figure 3 ------------------------------------------------------------------------------
def subset_file(args, out: Path, n_train: int) -> Path:
    """The first ``n_train`` training images (grey levels in [0, 1]) and the test set as an .npz."""
    path = out / "figure3" / f"{args.dataset}-train{n_train}.npz"
    if not path.exists():
        data = pyrovae.load_dataset(args.dataset, args.data if args.dataset != "digits" else None, binarize="none")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, train=data.train[:n_train].numpy(), test=data.test.numpy())
    return path


def checkpoints(total: float, start: float) -> list:
    """Sample budgets at which Figure 3 estimates log p(x): 1, 2, 5 x 10^k from ``start`` to ``total``."""
    points, k = [], math.floor(math.log10(start))
    while True:
        for m in (1, 2, 5):
            if start <= m * 10 ** k < total:
                points.append(m * 10 ** k)
        if 10 ** (k + 1) >= total:
            return points + [total]
        k += 1


def marginal_ll(vae, x: torch.Tensor, args) -> float:
    return hmc_log_likelihood(vae, x[: args.ll_points], num_samples=args.ll_samples, burn_in=args.ll_burn_in,
                              seed=args.seed).mean().item()


def figure3(args, out: Path) -> list:
    """Estimates log p(x) along each system's training; the CSV keeps earlier rows of other
    N_train values, so each size can be run in its own call."""
    rows = []
    nz, hidden = 3, 100
    for n_train in args.ntrain:
        path = subset_file(args, out, n_train)
        arrays = np.load(path)
        train_x = torch.from_numpy(arrays["train"]).bernoulli(generator=torch.Generator().manual_seed(1))
        test_x = torch.from_numpy(arrays["test"]).bernoulli(generator=torch.Generator().manual_seed(2))
        budgets = checkpoints(args.samples, max(n_train, args.samples / 100))
        nets = f"{{name='mlp', hidden=[{hidden}], activation='tanh', init_std=0.01}}"
        extra = ["data.name='file'", f"data.path='{path}'", "data.binarize='dynamic'",
                 f"model.encoder={nets}", f"model.decoder={nets}", "optim.name='adagrad'", f"optim.lr={args.lr}",
                 f"optim.weight_decay={1 / n_train:.6g}", "train.eval_every=1000000"]
        for system in args.systems:
            if system == "mcem":
                rows += mcem_curve(args, path, n_train, budgets, train_x, test_x, hidden)
                continue
            run_dir = out / "figure3" / f"{system}-train{n_train}"
            for budget in budgets:
                config = run_config("mnist" if args.dataset == "mnist" else "digits", system, nz,
                                    epochs_for(budget, n_train), args, extra)
                ensure_run(config, run_dir)
                vae = pyrovae.load(run_dir)
                rows.append({"system": system, "nz": nz, "n_train": n_train,
                             "samples": config.train.epochs * n_train,
                             "train_bound": marginal_ll(vae, train_x, args),
                             "test_bound": marginal_ll(vae, test_x, args)})
                print(rows[-1], flush=True)
    if (out / "figure3.csv").exists():
        with open(out / "figure3.csv") as f:
            kept = [{**r, "nz": int(r["nz"]), "n_train": int(r["n_train"]), "samples": int(r["samples"]),
                     "train_bound": float(r["train_bound"]), "test_bound": float(r["test_bound"])}
                    for r in csv.DictReader(f) if int(r["n_train"]) not in args.ntrain]
        rows = kept + rows
    write_csv(out / "figure3.csv", rows)
    draw_figure3(out / "figure3.png", rows)
    print(figure3_table(rows))
    return rows


def mcem_curve(args, path: Path, n_train: int, budgets: list, train_x, test_x, hidden: int) -> list:
    """Monte Carlo EM in this process (its chains are not a run folder), log p(x) at each budget."""
    data = pyrovae.load_dataset("file", str(path), "dynamic")
    torch.manual_seed(args.seed)
    vae = pyrovae.VAE(data.event_shape, latent_dim=3, likelihood="bernoulli",  # the encoder goes unused
                      decoder={"name": "mlp", "hidden": [hidden], "activation": "tanh", "init_std": 0.01})
    em = MonteCarloEM(vae, data, {"name": "adagrad", "lr": args.lr, "weight_decay": 1 / n_train}, seed=args.seed)
    rows = []
    for budget in budgets:
        while em.samples_seen < budget:
            record = em.run_epoch(100)
        rows.append({"system": "mcem", "nz": 3, "n_train": n_train, "samples": em.samples_seen,
                     "train_bound": marginal_ll(vae, train_x, args), "test_bound": marginal_ll(vae, test_x, args)})
        print(rows[-1], f"acceptance {record['accept_rate']:.2f}", flush=True)
    return rows


def draw_figure3(path: Path, rows: list) -> None:
    sizes = sorted({r["n_train"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.4), squeeze=False)
    for ax, n_train in zip(axes[0], sizes):
        for system in SYSTEM_NAMES:
            pts = [r for r in rows if r["n_train"] == n_train and r["system"] == system]
            for key, style in (("train_bound", "--"), ("test_bound", "-")):
                if pts:
                    ax.plot([r["samples"] for r in pts], [r[key] for r in pts], style, marker="o", markersize=3,
                            color=COLORS[system], label=f"{SYSTEM_NAMES[system]} {key.split('_')[0]}")
        ax.set_xscale("log")
        ax.set_title(f"$N_{{train}} = {n_train}$, $N_z = 3$")
        ax.set_xlabel("# training samples evaluated")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("marginal log-likelihood (nats)")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def figure3_table(rows: list) -> str:
    lines = ["Figure 3: marginal log-likelihood per datapoint (nats), train / test at the end; paper at ~6e7 samples",
             "", "| N_train | system | samples | measured train / test | paper train / test |",
             "| --- | --- | --- | --- | --- |"]
    for n_train in sorted({r["n_train"] for r in rows}):
        for system in SYSTEM_NAMES:
            pts = [r for r in rows if r["n_train"] == n_train and r["system"] == system]
            if pts:
                ref = REFERENCE_FIGURE3.get(n_train, {}).get(system)
                lines.append(f"| {n_train} | {SYSTEM_NAMES[system]} | {pts[-1]['samples']:.3g} | "
                             f"{pts[-1]['train_bound']:.1f} / {pts[-1]['test_bound']:.1f} | "
                             f"{f'{ref[0]} / {ref[1]}' if ref else '-'} |")
    return "\n".join(lines)


# -- Figures 4 and 5 -------------------------------------------------------------------------
def figure4(args, out: Path) -> list:
    """Learned 2-D manifolds (AEVB, Nz = 2) of --dataset and of Frey Face with --frey-data (the paper:
    both), from the runs of Figure 2 as they are; missing ones are trained at --samples."""
    written = []
    for dataset, path in figure4_datasets(args):
        vae, samples = trained_model(argparse.Namespace(**{**vars(args), "data": path}), out, dataset, 2)
        target = out / f"figure4-{dataset}.png"
        plot_manifold(target, vae, n=20 if dataset == "mnist" else 10)
        print(f"wrote {target} ({dataset}, AEVB after {samples:.3g} samples)")
        written.append(target)
    return written


def trained_model(args, out: Path, dataset: str, nz: int):
    """``(vae, samples seen)`` of the AEVB run of Figure 2 for (dataset, Nz), at whatever budget
    it has; a missing run is trained first, at ``--samples``."""
    run_dir = out / "figure2" / dataset / f"aevb-nz{nz}"
    if not (run_dir / "checkpoint.pt").exists():
        ensure_run(run_config(dataset, "aevb", nz, epochs_for(args.samples, num_train(dataset, args)), args), run_dir)
    metrics = read_metrics(run_dir)
    return pyrovae.load(run_dir), metrics[-1]["samples_seen"] if metrics else 0


def figure4_datasets(args) -> list:
    if args.dataset == "digits":
        return [("digits", None)]
    pairs = [(args.dataset, args.data)]
    if args.frey_data and args.dataset != "frey_face":
        pairs.append(("frey_face", args.frey_data))
    return pairs


def figure5(args, out: Path) -> list:
    """Random samples E[x | z], z ~ N(0, I), of AEVB models with Nz = 2, 5, 10, 20 (the runs of
    Figure 2 as they are; missing ones are trained at --samples)."""
    panels = []
    for nz in args.nz:
        vae, samples = trained_model(args, out, args.dataset, nz)
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            panels.append((as_images(vae.sample(100), vae.event_shape), f"$N_z = {nz}$ ({samples:.2g} samples)"))
    target = out / f"figure5-{args.dataset}.png"
    save_image_rows(target, panels, ncols=25, height=2.2)
    print(f"wrote {target}")
    return [target]


# -- main ----------------------------------------------------------------------------------
def main(args):
    if args.smoke:  # every figure on the bundled digits, in seconds
        args.dataset, args.data, args.samples, args.nz, args.ntrain = "digits", None, 1000, [2, 3], [300]
        args.ll_points, args.ll_samples, args.ll_burn_in = 20, 10, 5
        if args.figure is None:
            return {figure: main(argparse.Namespace(**{**vars(args), "figure": figure, "smoke": False}))
                    for figure in (2, 3, 4, 5)}
    if args.data is None and args.dataset != "digits":
        raise pyrovae.ConfigError(f"--data is needed for {args.dataset} "
                                  "(MNIST: torchvision's root folder; Frey Face: frey_rawface.mat)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = args.figure or 2
    if figure == 3:
        args.nz = [3]
    elif args.nz is None:
        args.nz = [3, 5, 10, 20, 200] if figure == 2 and args.dataset == "mnist" else [2, 5, 10, 20]
    return {2: figure2, 3: figure3, 4: figure4, 5: figure5}[figure](args, out)


def parser():
    p = argparse.ArgumentParser(description="Reproduce Kingma & Welling (2014), Figures 2 to 5")
    p.add_argument("-f", "--figure", type=int, choices=[2, 3, 4, 5], default=None, help="default 2 (--smoke: all)")
    p.add_argument("--dataset", choices=["mnist", "frey_face", "digits"], default="mnist")
    p.add_argument("--data", default=None, help="MNIST: torchvision's root folder; Frey Face: frey_rawface.mat")
    p.add_argument("--frey-data", default=None, help="Figure 4: Frey Face's .mat, to draw its manifold too")
    p.add_argument("-s", "--samples", type=float, default=1e7, help="training samples per run (the x axis)")
    p.add_argument("--nz", type=int, nargs="+", default=None,
                   help="latent dimensions (default: the paper's: MNIST 3 5 10 20 200; Frey Face, Figure 5: 2 5 10 20)")
    p.add_argument("--systems", nargs="+", choices=list(SYSTEM_NAMES), default=["aevb", "wake_sleep", "mcem"])
    p.add_argument("--ntrain", type=int, nargs="+", default=[1000, 50000], help="Figure 3: training set sizes")
    p.add_argument("--lr", type=float, default=0.02, help="Adagrad step size for Figure 3")
    p.add_argument("--frey-lr", type=float, default=0.01,
                   help="Adagrad step size for Frey Face (chosen from 0.01, 0.02, 0.1 on the first 2e5 samples)")
    p.add_argument("--ll-points", type=int, default=1000, help="Figure 3: points per split for log p(x)")
    p.add_argument("--ll-samples", type=int, default=1000, help="Figure 3: importance samples per point")
    p.add_argument("--ll-burn-in", type=int, default=100, help="Figure 3: HMC transitions before the proposal's fit")
    p.add_argument("--no-train", action="store_true",
                   help="figure 2: draw the runs as they are (partial or missing), training nothing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("-o", "--out", default="runs/reproduce_paper")
    p.add_argument("--smoke", action="store_true", help="every figure on the bundled digits at a tiny budget")
    return p


if __name__ == "__main__":
    try:
        main(parser().parse_args())
    except pyrovae.PyrovaeError as e:  # bad input: one line naming it, exit status 2
        print(f"reproduce_paper.py: error: {e}", file=sys.stderr)
        sys.exit(2)
