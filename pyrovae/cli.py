"""The ``pyrovae`` command line: ``train``, ``evaluate``, ``sample``.

It only parses arguments and calls the Python API. Bad input of any kind prints one line on
stderr (``pyrovae: error: ...``) and exits with status 2.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import PyrovaeError, RunDirError
from .train import Interrupted


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyrovae", description="Variational autoencoders in Pyro, trained by SVI.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a VAE from a TOML config (default: the embedded digits config)")
    p.add_argument("config", nargs="?", help="TOML config file; omitted: the embedded default, or the run's "
                                             "own config with --resume")
    p.add_argument("-s", "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("-o", "--out", help="run folder (default: runs/<data>-<time>)")
    p.add_argument("-r", "--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs to RUN_DIR/tensorboard")

    p = sub.add_parser("evaluate", help="score a run on its test split; writes RUN_DIR/evaluation.json")
    p.add_argument("run_dir")
    p.add_argument("--nll-samples", type=int, default=5000,
                   help="importance samples per test point for the log-likelihood (default 5000)")
    p.add_argument("--iwae-samples", type=int, default=50, help="k of the reported IWAE bound (default 50)")
    p.add_argument("-k", "--particles", type=int, default=10, help="samples per test point for the ELBO (default 10)")
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("sample", help="draw images from a trained run's model")
    p.add_argument("run_dir")
    p.add_argument("-n", "--num", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("-o", "--out", required=True, help="output PNG file")
    p.add_argument("--seed", type=int, default=0)
    return parser


def _train(args) -> None:
    from .config import load_config

    config_path = args.config
    if config_path is None and args.resume and args.out:
        config_path = str(Path(args.out) / "config.toml")
        if not Path(config_path).exists():
            raise RunDirError(f"{args.out}: not a pyrovae run folder (no config.toml)")
    overrides = (list(args.overrides) + (["train.progress=false"] if args.quiet else [])
                 + (["log.tensorboard=true"] if args.tensorboard else []))
    config = load_config(config_path, overrides)
    from .train import train

    run_dir = train(config, args.out, resume=args.resume)
    if _rank() == 0:
        print(f"run folder: {run_dir}")


def _evaluate(args) -> None:
    from .evaluate import evaluate_run
    from .train import resolve_device

    for flag in ("nll_samples", "iwae_samples", "particles"):
        if getattr(args, flag) < 1:
            raise PyrovaeError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 1")
    resolve_device(args.device)
    result = evaluate_run(args.run_dir, nll_samples=args.nll_samples, iwae_samples=args.iwae_samples,
                          elbo_particles=args.particles, device=args.device)
    print(json.dumps({k: v for k, v in result.items() if k not in ("unit_activity", "kl_per_dim")}, indent=2))
    print(f"written: {Path(args.run_dir) / 'evaluation.json'}")


def _sample(args) -> None:
    import pyro

    from .checkpoint import load
    from .plots import save_grid

    if args.num < 1:
        raise PyrovaeError(f"--num {args.num}: must be >= 1")
    if Path(args.out).suffix.lower() != ".png":
        raise PyrovaeError(f"--out {args.out}: must be a .png file")
    vae = load(args.run_dir)
    pyro.set_rng_seed(args.seed)
    save_grid(args.out, vae.sample(args.num), vae.event_shape, max(1, round(args.num ** 0.5)))
    print(f"wrote {args.out}")


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise): only rank 0 speaks."""
    return int(os.environ.get("RANK", "0"))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"train": _train, "evaluate": _evaluate, "sample": _sample}[args.command](args)
    except Interrupted as e:
        if _rank() == 0:
            print(f"pyrovae: {e}", file=sys.stderr)
        return 128 + e.signal_number
    except PyrovaeError as e:
        if _rank() == 0:
            print(f"pyrovae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyrovae: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
