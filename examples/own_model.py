"""Your own model, in your own file, with no guide, trained from the command line.

``examples/plugins/ink_vae.py`` declares a generative model with Pyro primitives only (a shape
code, a positive ink level per image, a global per-pixel bias) and registers it as the family
``ink_vae``. It writes no guide: pyrovae traces the model and builds an amortized one
(:class:`pyrovae.AmortizedGuide`). This script writes a config naming the file under
``[plugins]``, then runs what a user would type:

    pyrovae train CONFIG --out RUN
    pyrovae evaluate RUN --plugins ink_vae.py

(opening a run runs no plugin by itself: the user names the file, which is checked against the
SHA-256 the run recorded), and loads the trained model back, with the same plugin named, to show
its samples and the inferred ink levels.

    python examples/own_model.py --epochs 100
"""

import argparse
import json
import shutil
from pathlib import Path

import pyro
import torch

import pyrovae
from pyrovae.app.cli import main as pyrovae_cli
from pyrovae.app.plots import save_grid

PLUGIN = Path(__file__).resolve().parent / "plugins" / "ink_vae.py"


def main(args):
    if args.smoke:
        args.epochs, args.nll_samples = 1, 20
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(PLUGIN, out / "ink_vae.py")  # the user's own file, beside their config
    config = out / "ink.toml"
    config.write_text(f'[plugins]\nmodules = ["ink_vae.py"]\n\n[model]\nfamily = "ink_vae"\nlatent_dim = 2\n\n'
                      f'[train]\nepochs = {args.epochs}\nseed = {args.seed}\n')
    run = out / "run"
    if run.exists():
        shutil.rmtree(run)
    assert pyrovae_cli(["train", str(config), "--out", str(run), "-q"]) == 0
    plugin = str(out / "ink_vae.py")
    assert pyrovae_cli(["evaluate", str(run), "--nll-samples", str(args.nll_samples), "--iwae-samples", "20",
                        "--plugins", plugin]) == 0
    scores = json.loads((run / "evaluation.json").read_text())
    model = pyrovae.load(run, plugins=[plugin])
    data = pyrovae.load_dataset("digits")
    pyro.set_rng_seed(args.seed)
    save_grid(out / "ink_vae_samples.png", model.sample(64), data.event_shape, 8,
              "ink_vae: samples E[x | z, ink, bias]")
    ink = model.amortized_guide.medians(data.test_batch)["ink"]
    darkest = torch.argsort(ink)
    picks = torch.cat([darkest[:8], darkest[-8:]])
    save_grid(out / "ink_levels.png", data.test[picks], data.event_shape, 8,
              "test digits with the least (top) and most (bottom) inferred ink")
    result = {"sites": sorted(model.amortized_guide.sites), "test_elbo": scores["test_elbo"],
              "test_iwae": scores["test_iwae"], "test_nll": scores["test_nll"], "epochs": args.epochs,
              "ink_median_range": [float(ink.min()), float(ink.max())]}
    print(f"latent sites {result['sites']}: test ELBO {result['test_elbo']:.2f} <= IWAE_20 {result['test_iwae']:.2f} "
          f"<= log p(x) ~ {-result['test_nll']:.2f} nats")
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def parser():
    p = argparse.ArgumentParser(description="A model in your own file, with no guide, trained from the CLI")
    p.add_argument("-n", "--epochs", type=int, default=100)
    p.add_argument("--nll-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="runs/own_model")
    p.add_argument("--smoke", action="store_true", help="a few seconds, for tests")
    return p


if __name__ == "__main__":
    main(parser().parse_args())
