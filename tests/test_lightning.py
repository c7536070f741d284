"""pyrovae.lightning: a pyrovae model trained by Lightning's Trainer reaches pyrovae.fit's test ELBO,
under a precision plugin too, and Lightning's DDP on 2 CPU processes shards each epoch and matches
one process of the same global batch."""

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import pyrovae

lightning = pytest.importorskip("lightning")
from pyrovae.lightning import DataModule, Module  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)


@pytest.fixture(autouse=True)
def lightnings_own_notes():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")  # the digits are in memory
        warnings.filterwarnings("ignore", ".*LeafSpec.*")  # Lightning's own use of torch's pytree
        warnings.simplefilter("ignore", pyrovae.PosteriorCollapseWarning)
        yield


def test_lightning_trains_a_vae_to_the_test_elbo_of_pyrovae_fit():
    """Different data orders, the same objective: within seed noise (0.1 to 0.3 nats between
    seeds after 20 epochs of the 2-D digits VAE; the bar is 0.5)."""
    data = pyrovae.load_dataset("digits")
    lightning.seed_everything(0, verbose=False)
    vae = pyrovae.VAE(data.event_shape, 2)
    module = Module(vae, estimator="analytic", optim={"name": "adam", "lr": 1e-3})
    trainer = lightning.Trainer(max_epochs=20, **QUIET)
    trainer.fit(module, DataModule(data, batch_size=100))
    logged = trainer.test(module, DataModule(data, batch_size=100), verbose=False)[0]["test_elbo"]
    torch.manual_seed(0)
    reference = pyrovae.VAE(data.event_shape, 2)
    metrics = pyrovae.fit(reference, data, epochs=20, batch_size=100, progress=False, eval_every=20)
    assert trainer.global_step == 20 * 17  # ceil(1437 / 100) steps an epoch, as pyrovae.fit takes
    assert pyrovae.dataset_elbo(vae, data.test) == pytest.approx(metrics[-1]["test_elbo"], abs=0.5)
    assert logged == pytest.approx(pyrovae.dataset_elbo(vae, data.test), abs=0.2)  # one particle each
    assert module.algorithm.loss.__func__ is type(module.algorithm).loss  # pyrovae.fit's step, not a copy
    assert not any(m._forward_hooks for m in vae.modules())  # the float32 casts removed after fit


def test_a_precision_plugin_and_kl_warmup_run_with_the_elbo_in_float32():
    data = pyrovae.load_dataset("digits", validation_fraction=0.2)
    vae = pyrovae.VAE(data.event_shape, 2)
    module = Module(vae, kl_warmup_epochs=2)
    trainer = lightning.Trainer(max_epochs=2, precision="bf16-mixed", **QUIET)
    trainer.fit(module, DataModule(data, batch_size=100))
    assert module.beta_now() == 1.0 and torch.isfinite(trainer.callback_metrics["train_elbo"])
    assert trainer.callback_metrics["validation_elbo"].dtype == torch.float32
    batch = data.train_batch(torch.arange(8))
    module.setup("fit")  # the float32 casts, as Lightning's fit enters them
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module.algorithm.loss(batch, None, 1.0, len(batch)).loss
        inner = vae.encoder.net[0](batch.x.flatten(1))
    module.teardown("fit")
    assert loss.dtype == torch.float32 and inner.dtype == torch.bfloat16


def test_lightning_ddp_on_two_cpu_processes_shards_the_epoch_and_matches_one_process(tmp_path):
    """examples/lightning_vae.py under Lightning's DDP (gloo): each process sees half of each epoch,
    and 2 processes of 50 points a step end where 1 process of 100 does, within seed noise."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    script = ROOT / "examples" / "lightning_vae.py"
    done = subprocess.run([sys.executable, str(script), "--devices", "2", "--batch-size", "50", "--epochs", "8", "-o",
                           str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0 and "terminate called" not in done.stderr, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    spec = importlib.util.spec_from_file_location("lightning_vae", script)  # one process: this one
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    args = example.parser().parse_args(["--batch-size", "100", "--epochs", "8", "-o", str(tmp_path / "one")])
    one = example.main(args)
    assert two["processes"] == 2 and two["points_per_epoch_per_process"] == 809  # ceil(1617 / 2)
    assert one["processes"] == 1 and one["points_per_epoch_per_process"] == 1617
    assert two["test_elbo"] == pytest.approx(one["test_elbo"], abs=0.75)


def test_a_streamed_file_read_by_worker_processes_trains_under_lightning(tmp_path):
    """The data module reads through pyrovae's seam: a .npy file streamed a batch at a time, in two
    worker processes, dynamically binarized there."""
    import numpy as np

    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (300, 8, 8), dtype=np.uint8))
    data = pyrovae.load_dataset("file", str(tmp_path / "x.npy"), binarize="dynamic", in_memory=False)
    assert data.streamed
    batch = next(iter(DataModule(data, batch_size=64).train_dataloader()))
    assert len(batch) == 64 and set(batch.x.unique().tolist()) == {0.0, 1.0}
    trainer = lightning.Trainer(max_epochs=1, **QUIET)
    trainer.fit(Module(pyrovae.VAE(data.event_shape, 2)), DataModule(data, batch_size=64, num_workers=2))
    assert trainer.global_step == 5 and torch.isfinite(trainer.callback_metrics["train_elbo"])


def test_a_family_that_takes_labels_per_minibatch_is_refused_in_one_line():
    """Pyro's M2 takes all-labelled and all-unlabelled minibatches; the data module's are mixed."""
    from pyrovae.models.m2 import M2

    class SplitM2(M2):
        @classmethod
        def labels_under(cls, engine):
            return "per_minibatch"

    data = pyrovae.load_dataset("digits", labeled=100, binarize="threshold")
    module = Module(SplitM2(data.event_shape, 10, latent_dim=2))
    with pytest.raises(pyrovae.ConfigError, match="all-labelled and all-unlabelled minibatches"):
        module.build(data)
