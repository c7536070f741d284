"""The ``pyrovae`` command line: ``train``, ``tune``, ``evaluate``, ``encode``, ``sample``, ``convert-checkpoint``.

It only parses arguments and calls the Python API. Bad input of any kind prints one line on
stderr (``pyrovae: error: ...``) and exits with status 2; SIGINT and SIGTERM exit with
128 + the signal number.
"""

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from pyrovae.app.files import CONFIG
from pyrovae.errors import PyrovaeError, RunDirError, one_line, shell_word
from pyrovae.version import __version__


def add_plugins_option(command: argparse.ArgumentParser) -> None:
    """``--plugins PATH_OR_MODULE ...``, for every command that opens a run (and a fresh ``train``)."""
    command.add_argument("--plugins", nargs="+", action="extend", default=[], metavar="PATH_OR_MODULE",
                         help="plugin files or dotted module names the run needs (checked against the SHA-256 the "
                              "run recorded, then run: this runs their code; nothing in a run folder is run otherwise)")


def add_mlflow_option(command: argparse.ArgumentParser, help: str) -> None:
    """``--mlflow [URI]``: MLflow tracking where the user points (a run folder never names the store)."""
    command.add_argument("--mlflow", nargs="?", const=True, default=None, metavar="URI", help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyrovae", description="Variational autoencoders in Pyro, trained by SVI.")
    parser.add_argument("--version", action="version", version=f"pyrovae {__version__}")
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
    add_mlflow_option(p, "also log the run to MLflow (log.mlflow); URI: the store (log.mlflow_uri), default "
                         "$MLFLOW_TRACKING_URI, else the database mlflow.db beside the run folder. --resume logs only "
                         "where this or your environment points, never where the run folder says")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (train.num_threads; on a shared, busy CPU fewer than its cores)")
    add_plugins_option(p)

    p = sub.add_parser("tune", help="search hyperparameters with Optuna over the config's [tune.space]; "
                                     "every trial is a run folder in --out")
    p.add_argument("config", help="TOML config with a [tune] table ([tune.space]: the keys to search)")
    p.add_argument("-o", "--out", required=True, help="the study folder: trial-NNNN run folders, study.db, "
                                                      "best.toml, trials.csv and the figures")
    p.add_argument("--storage", metavar="URL", help="Optuna's storage, any database URL it opens (default "
                                                    "sqlite:///OUT/study.db); processes sharing one share the study")
    p.add_argument("--trials", type=int, metavar="N", help="finished trials the study ends at (tune.trials)")
    p.add_argument("-s", "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value of every trial, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch in each trial (train.num_threads)")
    add_plugins_option(p)

    p = sub.add_parser("evaluate", help="score a run on its test split; writes RUN_DIR/evaluation.json")
    p.add_argument("run_dir")
    p.add_argument("--nll-samples", type=int, default=5000,
                   help="importance samples per test point for the log-likelihood (default 5000)")
    p.add_argument("--iwae-samples", type=int, default=50, help="k of the reported IWAE bound (default 50)")
    p.add_argument("-k", "--particles", type=int, default=10, help="samples per test point for the ELBO (default 10)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--which", choices=("last", "best"), default="last",
                   help="the last checkpoint or the best epoch's (best.pt; written to evaluation_best.json)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-o", "--out", help="where to write the JSON (default RUN_DIR/evaluation.json)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    add_mlflow_option(p, "also log the evaluation to the run's MLflow run in this store (default "
                         "$MLFLOW_TRACKING_URI, else mlflow.db beside the run folder); without it, only where "
                         "$MLFLOW_TRACKING_URI is the store the run was tracked in, never where the folder says")
    add_plugins_option(p)

    p = sub.add_parser("encode", help="write the posterior means E_q[z | x] of a split to a .npz file")
    p.add_argument("run_dir")
    p.add_argument("--split", default="test", help="test (default), train, or validation where the run has one")
    p.add_argument("--which", choices=("last", "best"), default="last", help="the last checkpoint or best.pt")
    p.add_argument("--device", default="cpu", help="where the encoder runs (default cpu)")
    p.add_argument("-o", "--out", required=True, help="the .npz file: latents (N, latent size), labels (N,)")
    add_plugins_option(p)

    p = sub.add_parser("sample", help="draw images from a trained run's model")
    p.add_argument("run_dir")
    p.add_argument("-n", "--num", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("-o", "--out", required=True, help="output PNG file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", type=int, default=None, metavar="K",
                   help="draw every sample for class K (families that read labels: cvae, m2)")
    add_plugins_option(p)

    p = sub.add_parser("convert-checkpoint", help="rewrite an older pyrovae checkpoint (format 1) in the current, "
                                                  "code-free format; only for a run folder you trust")
    p.add_argument("run_dir")
    p.add_argument("--trust", action="store_true",
                   help="confirm that you trust the checkpoint: converting unpickles it, which runs any code it holds")
    return parser


def _train(args) -> None:
    from pyrovae.app.config_files import load_config
    from pyrovae.app.run import summary_line, train

    if isinstance(args.mlflow, str) and args.config is None and args.mlflow.lower().endswith(".toml"):
        args.config, args.mlflow = args.mlflow, True  # "--mlflow vae.toml": the flag, then the config
    config_path, record_of = args.config, None
    if config_path is None and args.resume and args.out:
        config_path = str(Path(args.out) / CONFIG)
        record_of = Path(args.out)  # the run's own config is its record: nothing it names runs
        if not Path(config_path).exists():
            raise RunDirError(f"{args.out}: not a pyrovae run folder (no config.toml)")
    _check_threads(args.threads)
    _hint_if_busy(args.threads, args.quiet)
    mlflow = args.mlflow
    if mlflow is None and record_of is not None:  # the run's record: it was tracked where the user's environment is?
        mlflow = _opened_run_store(record_of, None, f"pyrovae train --out {shell_word(args.out)} --resume")
    overrides = (list(args.overrides) + (["train.progress=false"] if args.quiet else [])
                 + (["log.tensorboard=true"] if args.tensorboard else [])
                 + (["log.mlflow=true"] if mlflow else [])
                 + ([f"log.mlflow_uri={json.dumps(mlflow)}"] if isinstance(mlflow, str) else [])
                 + ([f"train.num_threads={args.threads}"] if args.threads is not None else []))
    command = (f"pyrovae train --out {shell_word(args.out)} --resume {{plugins}}" if args.resume else
               f"pyrovae train {shell_word(config_path)} {{plugins}}")
    config = load_config(config_path, overrides, args.plugins, record_of, command)

    run_dir = train(config, args.out, resume=args.resume)
    if _rank() == 0:
        print(summary_line(run_dir, os.environ.get("PYROVAE_CLI", "pyrovae")))


def _tune(args) -> None:
    from pyrovae.app.tune import tune

    _check_threads(args.threads)
    if args.trials is not None and not 1 <= args.trials <= 10**6:
        raise PyrovaeError(f"--trials {args.trials}: must be in [1, 10^6]")
    tune(args.config, args.out, args.overrides, args.plugins, args.trials, args.storage, args.threads)


def _opened_run_store(run_dir, mlflow, command: str):
    """Where a command that opens ``run_dir`` logs to MLflow (:func:`~pyrovae.app.tracking.opened_run_store`:
    the user's flag or environment alone), saying in one line where the folder records it was
    tracked when that is not where the user points."""
    from pyrovae.app.opening import read_run_record
    from pyrovae.app.tracking import opened_run_store, recorded_store, tracking_notice

    try:
        log = read_run_record(run_dir).get("log", {})  # shown, never followed
    except PyrovaeError:
        log = {}
    recorded = recorded_store(run_dir, log if isinstance(log, dict) else {})
    store = opened_run_store(run_dir, mlflow, recorded)
    notice = tracking_notice(run_dir, recorded, store, command)
    if notice and _rank() == 0:
        print(notice, file=sys.stderr)
    return store


def _hint_if_busy(threads, quiet: bool) -> None:
    """On a terminal, say when the CPU is already busy: torch's default of one thread per core then
    oversubscribes it (on a loaded 2-core machine one MNIST epoch took 120 s, 7 s with one thread)."""
    if threads is not None or quiet or not sys.stderr.isatty() or not hasattr(os, "getloadavg"):
        return
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load >= cores * 0.75 and cores > 1:
        print(f"pyrovae: the CPU is busy (load {load:.1f} on {cores} cores); if training is slow, "
              f"try --threads {max(1, cores // 2)}", file=sys.stderr)


def _check_threads(threads) -> None:
    from pyrovae.training.train_config import MAX_THREADS

    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise PyrovaeError(f"--threads {threads}: must be in [1, {MAX_THREADS}]")


def _evaluate(args) -> None:
    import torch

    from pyrovae.app.run import evaluate_run

    for flag in ("nll_samples", "iwae_samples", "particles"):
        value = getattr(args, flag)
        if not 1 <= value <= 10**9:
            raise PyrovaeError(f"--{flag.replace('_', '-')} {value}: must be in [1, 10^9]")
    _check_threads(args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else Path(args.run_dir) / _evaluation_name(args.which)
    if Path(args.run_dir, CONFIG).is_file():
        _opened_run_store(args.run_dir, args.mlflow, f"pyrovae evaluate {shell_word(args.run_dir)}")

    def report(result):
        print(json.dumps({k: v for k, v in result.items() if k not in ("unit_activity", "kl_per_dim")}, indent=2),
              flush=True)

    result = evaluate_run(args.run_dir, nll_samples=args.nll_samples, iwae_samples=args.iwae_samples,
                          elbo_particles=args.particles, device=args.device, out=args.out, report=report,
                          plugins=args.plugins, which=args.which, progress=not args.quiet, mlflow=args.mlflow)
    print(f"written: {out} (epoch {result['epoch']}, {args.which} checkpoint)")


def _evaluation_name(which: str) -> str:
    from pyrovae.app.files import EVALUATION, EVALUATION_BEST

    return EVALUATION if which == "last" else EVALUATION_BEST


def _encode(args) -> None:
    from pyrovae.app.run import encode_run

    shapes = encode_run(args.run_dir, args.out, args.split, args.plugins, args.which, args.device)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))


def _sample(args) -> None:
    import pyro

    from pyrovae.app.files import checked_output
    from pyrovae.app.opening import open_run
    from pyrovae.app.plots import save_grid
    from pyrovae.app.run import open_run_with_data
    from pyrovae.data.batch import NeedsData
    from pyrovae.data.splits import Standardization
    from pyrovae.models.base import NeedsInput, draws_read_labels
    from pyrovae.rng import seed_problem

    if not 1 <= args.num <= 100_000:
        raise PyrovaeError(f"--num {args.num}: must be in [1, 100000]")
    if seed_problem(args.seed):
        raise PyrovaeError(f"--seed {args.seed}: {seed_problem(args.seed)}")
    checked_output(args.out, args.run_dir, ".png")
    command = f"pyrovae sample RUN_DIR {{plugins}} --out {shell_word(args.out)}"
    opened = open_run(args.run_dir, args.plugins, command)
    vae = opened.model.eval()
    classes = getattr(vae, "num_classes", None)
    if args.label is not None and not classes and opened.state.get("num_classes"):
        # a family that reads batch.y without a num_classes of its own: the data's classes, if its draws read them
        classes = opened.state["num_classes"]
        try:
            reads = draws_read_labels(vae, classes)
        except NeedsData:
            reads = draws_read_labels(vae, classes, open_run_with_data(args.run_dir, args.plugins, command,
                                                                        "cpu")[1].test_head(2))
        if reads:
            vae.num_classes = classes
        else:
            classes = None
    if args.label is not None and not classes:
        raise PyrovaeError(f"--label {args.label}: the run's model ({type(vae).__name__}) reads no labels (its "
                           "draws are the same whatever the label); --label is for families that do (cvae, m2, "
                           "a family of yours that reads batch.y)")
    if args.label is not None and not 0 <= args.label < classes:
        raise PyrovaeError(f"--label {args.label}: must be a class in [0, {classes})")
    pyro.set_rng_seed(args.seed)
    try:
        samples = vae.sample(args.num) if args.label is None else vae.sample(args.num, y=args.label)
    except NeedsInput as e:  # the model conditions on an input: samples given the run's test points
        _, data = open_run_with_data(args.run_dir, args.plugins, command, "cpu")
        points = data.test_head(args.num)
        print(f"pyrovae: {e}; drawn given the first {len(points)} test points", file=sys.stderr)
        pyro.set_rng_seed(args.seed)
        samples = vae.sample(len(points), batch=points, y=args.label)
    recorded = opened.state["data"].get("standardization")
    if recorded is not None:  # data.standardize: the samples in the data's units
        samples = Standardization.from_record(recorded, vae.event_shape).undo(samples)
    save_grid(args.out, samples, vae.event_shape, max(1, round(args.num ** 0.5)))
    print(f"wrote {args.out}")


def _convert(args) -> None:
    from pyrovae.app.convert import convert_checkpoint

    if not args.trust:
        raise PyrovaeError(f"{args.run_dir}: converting unpickles the old checkpoint, which runs any code it holds; "
                           "do it only for a run folder from a source you trust, with --trust")
    print(f"converted: {convert_checkpoint(args.run_dir)}")


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise): only rank 0 speaks."""
    return int(os.environ.get("RANK", "0"))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)  # --version, --help and bad flags answer here, before torch loads
    from pyrovae.app.run import StoppedAtOnce, stop_at_once_on_signals
    from pyrovae.training.loop import Interrupted

    command = {"train": _train, "tune": _tune, "evaluate": _evaluate, "encode": _encode, "sample": _sample,
               "convert-checkpoint": _convert}[args.command]
    try:
        # SIGINT / SIGTERM stop at once (exit 128 + n), except inside the training loop, which
        # installs its own handlers for as long as it runs: it saves a checkpoint first
        with stop_at_once_on_signals():
            command(args)
    except Interrupted as e:
        _say(f"pyrovae: {e}")
        return 128 + e.signal_number
    except PyrovaeError as e:
        _say(f"pyrovae: error: {e}")
        return 2
    except KeyboardInterrupt as e:  # a second signal, or one outside the loop: stopped at once
        number = e.signal_number if isinstance(e, StoppedAtOnce) else signal.SIGINT
        _say(f"pyrovae: stopped at once by {signal.Signals(number).name}; files already written are kept whole")
        return 128 + number
    except MemoryError:
        _say("pyrovae: error: out of memory; lower the sizes (batch, particles, networks, samples)")
        return 2
    except Exception as e:  # a path no check foresaw: still one line, and the traceback on request
        if os.environ.get("PYROVAE_TRACEBACK"):
            raise
        _say(f"pyrovae: error: unexpected {type(e).__name__}: {e} (PYROVAE_TRACEBACK=1 shows where)")
        return 2
    return 0


def _say(message: str) -> None:
    """One line on stderr, from rank 0 only."""
    if _rank() == 0:
        print(one_line(message), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())


