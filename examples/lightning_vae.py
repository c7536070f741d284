"""A pyrovae VAE trained by PyTorch Lightning: ``pyrovae.lightning.Module`` (the step loss
``pyrovae.fit`` takes) and ``DataModule`` (pyrovae's data seam) under ``lightning.Trainer``, which
brings its strategies, loggers, callbacks and precision plugins.

    python examples/lightning_vae.py --epochs 20
    python examples/lightning_vae.py --devices 2 --batch-size 50       # DDP on 2 CPU processes
    python examples/lightning_vae.py --precision bf16-mixed

Needs Lightning: ``pip install 'pyrovae[lightning]'``.
"""

import argparse
import json
import warnings
from pathlib import Path

import lightning
import torch

import pyrovae
from pyrovae.lightning import DataModule, Module


class PointsSeen(lightning.Callback):
    """How many training points this process saw (each DDP process takes its shard)."""

    def __init__(self):
        self.points = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.points += len(batch)


def main(args):
    if args.smoke:
        args.epochs = 1
    lightning.seed_everything(args.seed, verbose=False)
    data = pyrovae.load_dataset(args.data, args.data_path)
    vae = pyrovae.VAE(data.event_shape, latent_dim=args.latent_dim, prior=args.prior)
    module = Module(vae, estimator=args.estimator, optim={"name": "adam", "lr": args.learning_rate})
    seen = PointsSeen()
    trainer = lightning.Trainer(max_epochs=args.epochs, accelerator=args.accelerator, devices=args.devices,
                                strategy="ddp" if args.devices > 1 else "auto", precision=args.precision,
                                default_root_dir=args.out, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, callbacks=[seen])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")  # the digits are in memory
        trainer.fit(module, DataModule(data, batch_size=args.batch_size))
        test_elbo = trainer.test(module, DataModule(data, batch_size=args.batch_size), verbose=False)[0]["test_elbo"]
    result = {"test_elbo": test_elbo, "epochs": args.epochs, "processes": trainer.world_size,
              "points_per_epoch_per_process": seen.points / args.epochs}
    if trainer.global_rank == 0:
        print(f"test ELBO after {args.epochs} epochs on {trainer.world_size} process(es): {test_elbo:.3f} nats "
              "per datapoint")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(result) + "\n")
    if torch.distributed.is_initialized():  # Lightning leaves DDP's process group open; gloo's must close before exit
        torch.distributed.destroy_process_group()
    return result


def parser():
    p = argparse.ArgumentParser(description="A pyrovae VAE trained by PyTorch Lightning")
    p.add_argument("-n", "--epochs", type=int, default=20)
    p.add_argument("-e", "--estimator", choices=["mc", "analytic", "iwae"], default="analytic")
    p.add_argument("-d", "--data", choices=["digits", "mnist"], default="digits")
    p.add_argument("--data-path", default=None, help="torchvision root folder for MNIST")
    p.add_argument("-p", "--prior", default="standard_normal", help="a registered prior name")
    p.add_argument("-z", "--latent-dim", type=int, default=2)
    p.add_argument("-b", "--batch-size", type=int, default=100, help="per process")
    p.add_argument("-lr", "--learning-rate", type=float, default=1e-3)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--devices", type=int, default=1, help="processes (DDP above 1)")
    p.add_argument("--precision", default="32", help="Lightning's: 32, bf16-mixed, 16-mixed (CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="runs/lightning_vae")
    p.add_argument("--smoke", action="store_true", help="one epoch, for tests")
    return p


if __name__ == "__main__":
    torch.set_num_threads(1)  # one thread per process: several processes share the cores
    main(parser().parse_args())
