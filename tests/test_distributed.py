"""Data-parallel training with torchrun (gloo on the CPU): the same parameters as one process,
disjoint shards that cover each epoch, and checkpoints that resume with another world size."""

import contextlib
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from pyrovae import VAE, TrainConfig
from pyrovae.app.checkpoint import read_checkpoint
from pyrovae.app.cli import main
from pyrovae.data.datasets import Dataset
from pyrovae.training.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["--set", "train.eval_every=1", "--set", "model.encoder.hidden=[32]", "--set", "model.decoder.hidden=[32]",
            "--set", "train.batch_size=64", "-q"]


def two_machines(tmp_path, *args, settings=SETTINGS):
    """``pyrovae train ARGS`` as the docs' two-machine command, simulated: two torchrun agents on
    this machine (``--nnodes=2``, c10d rendezvous on 127.0.0.1, one process each); their outputs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                                "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
                                "--rdzv_id=pyrovae-test", "-m", "pyrovae", "train", *args, *settings],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for rank in (0, 1)]
    outputs = [agent.communicate(timeout=900) for agent in agents]
    for agent, (_, err) in zip(agents, outputs):
        assert agent.returncode == 0, err[-3000:]
    return "".join(out for out, _ in outputs)


def pyrovae_cmd(tmp_path, *args, nproc=1, settings=SETTINGS):
    """``pyrovae train ARGS`` in ``tmp_path``: under torchrun for ``nproc`` > 1; one process in this
    one (the CLI's ``main``, without a second interpreter's start-up; a plugin it runs is gone from
    the registries after the test, conftest.registries_as_they_were)."""
    if nproc == 1:
        with contextlib.chdir(tmp_path), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # as in a process of its own: warnings are printed, not errors
            assert main(["train", *args, *settings]) == 0
        return None
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    proc = subprocess.run([sys.executable, *launcher, "-m", "pyrovae", "train", *args, *settings], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_same_parameters(a, b, atol=1e-4):
    a, b = read_checkpoint(a / "checkpoint.pt"), read_checkpoint(b / "checkpoint.pt")
    timing = ("epoch_seconds", "epoch_loss", "epoch_elbo")  # a half-done epoch's time and sums (over all ranks)
    assert {k: v for k, v in a["counters"].items() if k not in timing} == \
        {k: v for k, v in b["counters"].items() if k not in timing}
    for key in ("epoch_loss", "epoch_elbo"):
        assert a["counters"][key] == pytest.approx(b["counters"][key], rel=1e-5)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=atol, msg=k)


@pytest.mark.parametrize("world, binarize", [(2, "dynamic"), (3, "none")])
def test_shards_are_disjoint_and_cover_the_epoch(world, binarize):
    n = 103
    ids = torch.arange(n, dtype=torch.float32).reshape(n, 1) / n  # each point carries its index
    data = Dataset("ids", ids, ids[:4].round(), binarize)
    cfg = TrainConfig(batch_size=10, epochs=1)
    vae = VAE((1,), 2, likelihood="continuous_bernoulli" if binarize == "none" else "bernoulli")
    seen = []
    for rank in range(world):
        trainer = Trainer(vae, data, cfg, {"name": "adam"})
        trainer.rank, trainer.world = rank, world  # as a process of a world of this size would be
        trainer.noise.manual_seed(0)
        order = torch.Generator().manual_seed(7)
        batches = torch.randperm(n, generator=order).split(10)
        shards = []
        for index in batches:
            batch, eps = trainer.minibatch(index)
            x = batch.x
            assert eps.shape == (1, x.shape[0], 2)
            shards.append(index[rank::world])
            if binarize == "none":
                torch.testing.assert_close(x.squeeze(1) * n, shards[-1].float())
        seen.append(torch.cat(shards))
    everything = torch.cat(seen)
    assert sorted(everything.tolist()) == list(range(n))  # disjoint, and together the whole epoch


def test_ranks_draw_the_global_batch_noise():
    """Rank r's noise is the r-th shard of the noise one process would draw for the whole batch."""
    n = 40
    data = Dataset("x", torch.rand(n, 1, 4, 4), torch.rand(4, 1, 4, 4).round(), "dynamic")
    cfg = TrainConfig(batch_size=8, num_particles=2)
    vae = VAE((1, 4, 4), 3)
    index = torch.arange(8)
    alone = Trainer(vae, data, cfg, {"name": "adam"})
    alone.noise.manual_seed(1)
    batch_all, eps_all = alone.minibatch(index)
    for rank in range(2):
        t = Trainer(vae, data, cfg, {"name": "adam"})
        t.rank, t.world = rank, 2
        t.noise.manual_seed(1)
        batch, eps = t.minibatch(index)
        torch.testing.assert_close(batch.x, batch_all.x[rank::2])
        torch.testing.assert_close(eps, eps_all[:, rank::2])


def test_a_streamed_rank_reads_only_its_shard_of_each_minibatch(tmp_path, monkeypatch):
    """Rank r of 2 reads, in an epoch, exactly the positions r, r + 2, ... of each global
    minibatch from the file: the two ranks' reads are disjoint and together the epoch."""
    import numpy as np

    from pyrovae import load_dataset

    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (103, 4, 4), dtype=np.uint8))
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor, op=None: None)  # sums stay per rank
    reads = []
    for rank in range(2):
        data = load_dataset("file", str(tmp_path / "x.npy"), binarize="dynamic", in_memory=False)
        trainer = Trainer(VAE((4, 4), 2), data, TrainConfig(batch_size=10, epochs=1, progress=False),
                          {"name": "adam"})
        trainer.rank, trainer.world = rank, 2
        split, read = trainer.data.train_split, []
        original = type(split).stored
        monkeypatch.setattr(split, "stored", lambda index, split=split, read=read: (read.extend(index.tolist()),
                                                                                  original(split, index))[1])
        trainer.run()
        reads.append(read)
    assert len(reads[0]) + len(reads[1]) == len(data.train_split)
    assert sorted(reads[0] + reads[1]) == list(range(len(data.train_split)))


def test_two_machines_streaming_a_file_match_one_process_holding_it_and_resume_with_one(tmp_path):
    """Two ranks on two "machines" (the docs' two-machine command as two torchrun agents, c10d
    rendezvous on 127.0.0.1), each reading its shard from the file, end where one process with the
    data in memory ends, mid-epoch (a step budget); rank 0 alone speaks and writes one run folder;
    the 2-rank checkpoint, half an epoch in, continues on one process and ends where the
    1-process run does."""
    import numpy as np

    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (300, 8, 8), dtype=np.uint8))
    data = ["--set", "data.name=file", "--set", f"data.path={tmp_path / 'x.npy'}", "--set", "data.binarize=dynamic",
            "--set", "train.epochs=2", "--set", "train.max_steps=7"]  # 5 steps an epoch: ends mid-epoch
    out = two_machines(tmp_path, "--out", "two", *data, "--set", "data.in_memory=false")
    assert out.count("run folder:") == 1  # only rank 0 speaks
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["two"]  # and writes
    pyrovae_cmd(tmp_path, "--out", "one", *data, "--set", "data.in_memory=true")
    assert_same_parameters(tmp_path / "two", tmp_path / "one")
    assert read_checkpoint(tmp_path / "two" / "checkpoint.pt")["counters"]["epoch_step"] == 2
    metrics = [(tmp_path / run / "metrics.jsonl").read_text().splitlines() for run in ("two", "one")]
    assert len(metrics[0]) == len(metrics[1]) == 2  # rank 0 alone wrote its lines: epoch 1, then the stop
    for two, one in zip(*metrics):
        t, o = eval(two.replace("null", "None")), eval(one.replace("null", "None"))
        assert t["test_elbo"] == pytest.approx(o["test_elbo"], abs=1e-3)
        assert t["train_elbo"] == pytest.approx(o["train_elbo"], abs=1e-3)  # summed over both ranks' shards

    more = ["--resume", "--set", "train.epochs=3", "--set", "train.max_steps=0"]
    pyrovae_cmd(tmp_path, "--out", "two", *more)  # the 2-rank checkpoint, on 1 process
    pyrovae_cmd(tmp_path, "--out", "one", *more)
    assert_same_parameters(tmp_path / "two", tmp_path / "one")
    assert read_checkpoint(tmp_path / "two" / "checkpoint.pt")["counters"]["epoch"] == 3


def test_two_ranks_of_a_family_with_labels_per_minibatch_match_one_process(tmp_path):
    """A family that takes labels per minibatch (M2's terms, which take all-labelled and
    all-unlabelled minibatches, and whose noise the loop draws for the global batch): each rank
    takes its shard of every minibatch of one kind, and two ranks end where one process does."""
    (tmp_path / "split_m2.py").write_text(
        "import pyrovae\nfrom pyrovae.models.m2 import M2\n\n\n@pyrovae.MODELS.register('split_m2')\n"
        "class SplitM2(M2):\n    labels = 'per_minibatch'\n")
    sets = ["--plugins", str(tmp_path / "split_m2.py"), "--set", "model.family=split_m2", "--set", "model.latent_dim=2",
            "--set", "data.labeled=100", "--set", "data.binarize=threshold", "--set",
            "train.epochs=1", "--set", "train.max_steps=8", "--set", "train.labeled_weight=balanced"]
    settings = ["--set", "train.eval_every=1", "--set", "train.batch_size=50", "-q"]
    pyrovae_cmd(tmp_path, "--out", "two", *sets, nproc=2, settings=settings)
    pyrovae_cmd(tmp_path, "--out", "one", *sets, settings=settings)
    assert_same_parameters(tmp_path / "two", tmp_path / "one")

