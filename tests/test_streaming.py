"""Streamed splits are the general path, in-memory tensors its fast case: the same points, the
same training, bit for bit; a step budget that ends mid-epoch; and a file larger than the
memory the process may use trains."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import pyrovae_in_cgroup, sparse_images

import pyrovae
from pyrovae.app.cli import main
from pyrovae.data.rows import NpyRows
from pyrovae.data.splits import InMemorySplit, StreamedSplit


@pytest.fixture
def pixels(tmp_path):
    """An MNIST-shaped uint8 file of 600 images with labels beside it."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (600, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "pixels.npy", x)
    return tmp_path / "pixels.npy", x


def test_streamed_and_in_memory_splits_give_the_same_points_fingerprint_and_training(pixels):
    path, x = pixels
    memory = pyrovae.load_dataset("file", str(path), binarize="dynamic", in_memory=True)
    streamed = pyrovae.load_dataset("file", str(path), binarize="dynamic", in_memory=False)
    assert isinstance(memory.train_split, InMemorySplit) and isinstance(streamed.train_split, StreamedSplit)
    assert streamed.streamed and not memory.streamed
    rows = streamed.train_split.rows
    assert isinstance(rows, NpyRows) and rows.dtype == torch.uint8  # mapped, read by index in its stored dtype
    assert streamed.train_split.index.dtype == np.int32  # the held-out split is an index map, 4 bytes a point
    index = torch.tensor([5, 3, 3, 500, 0])  # unsorted, repeated: read sorted, given back in order
    assert torch.equal(memory.train_split.read(index), streamed.train_split.read(index))
    assert torch.equal(memory.test, streamed.test[:])  # the fixed binarization of the test split: one draw
    assert torch.equal(streamed.test[10:20], memory.test[10:20])
    expected = torch.from_numpy(x.astype(np.float32)) * (1 / 255)
    assert torch.equal(memory.train_split.read(index), expected[streamed.train_split.index[index.numpy()]])
    from pyrovae.app.fingerprint import data_fingerprint

    assert data_fingerprint(memory) == data_fingerprint(streamed)

    def trained(data):
        torch.manual_seed(0)
        vae = pyrovae.VAE((8, 8), latent_dim=2, encoder={"name": "mlp", "hidden": [16]},
                          decoder={"name": "mlp", "hidden": [16]})
        metrics = pyrovae.fit(vae, data, epochs=2, batch_size=64, progress=False, eval_every=1)
        return vae, metrics

    (a, ma), (b, mb) = trained(memory), trained(streamed)
    assert [r["train_elbo"] for r in ma] == [r["train_elbo"] for r in mb]
    assert [r["test_elbo"] for r in ma] == [r["test_elbo"] for r in mb]
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_workers_read_the_same_batches_as_the_training_process(pixels):
    path, _ = pixels
    split = pyrovae.load_dataset("file", str(path), in_memory=False).train_split
    plan = [torch.randperm(len(split))[:32] for _ in range(5)]
    alone = list(split.plan(plan, num_workers=0))
    workers = list(split.plan(plan, num_workers=2))
    assert all(torch.equal(a, b) for a, b in zip(alone, workers)) and len(workers) == 5
    assert all(torch.equal(a, split.read(i)) for a, i in zip(alone, plan))


def test_auto_keeps_small_data_in_memory_and_streams_what_does_not_fit(pixels, monkeypatch):
    path, _ = pixels
    assert not pyrovae.load_dataset("file", str(path)).streamed
    import pyrovae.data.datasets as datasets

    monkeypatch.setattr(datasets, "available_bytes", lambda device="cpu": 100_000)  # 600 * 64 * 4 B = 153.6 kB
    assert pyrovae.load_dataset("file", str(path)).streamed
    with pytest.raises(pyrovae.DataError, match="set data.in_memory"):
        pyrovae.load_dataset("file", str(path), in_memory=True)


def run_cli(args, capsys):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.err


def test_max_steps_stops_mid_epoch_evaluates_and_resumes_to_the_straight_run(tmp_path, capsys):
    common = ["train", "--set", "train.epochs=3", "--set", "train.batch_size=200", "--set", "model.encoder.hidden=[32]",
              "--set", "model.decoder.hidden=[32]", "-q"]
    code, err = run_cli([*common, "--set", "train.max_steps=12", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in lines] == [(1, 9), (2, 12)]  # 1617 points: 9 steps an epoch
    assert lines[-1]["test_elbo"] is not None and lines[-1]["samples_seen"] == 1617 + 3 * 200
    assert (tmp_path / "a" / "reconstructions.png").exists()
    code, err = run_cli(["train", "--out", str(tmp_path / "a"), "--resume", "--set", "train.max_steps=0", "-q"],
                        capsys)
    assert code == 0, err
    code, err = run_cli([*common, "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    resumed, straight = ((tmp_path / run / "metrics.jsonl").read_text() for run in ("a", "b"))
    def strip(text):
        return [{k: v for k, v in json.loads(line).items() if k not in ("train_seconds", "images_per_second")}
                for line in text.splitlines()]
    assert strip(resumed) == strip(straight)  # the partial record replaced by the epoch's whole one


def test_a_file_larger_than_the_memory_allowed_streams_and_trains_for_a_step_budget(tmp_path):
    """A real limit: a cgroup (v1) of 640 MiB, and a 1.6 GB uint8 file of MNIST-shaped images:
    data.in_memory = "auto" streams it, trains 30 steps, evaluates and writes its figures."""
    sparse_images(tmp_path / "big.npy", 2_000_000, value=200)
    proc, peak = pyrovae_in_cgroup(640 << 20, [
        "train", "--set", "data.name=file", "--set", f"data.path={tmp_path / 'big.npy'}", "--set",
        "data.test_fraction=0.001", "--set", "data.binarize=dynamic", "--set", "train.max_steps=30", "--set",
        "train.batch_size=100", "--out", tmp_path / "run", "-q"])
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 30 and record["test_elbo"] is not None
    assert (tmp_path / "big.npy").stat().st_size > 2.3 * (640 << 20) and peak <= 640 << 20, peak


TRIM_PROBE = """
import torch
from pyrovae.devices import release_freed_memory
def anonymous_mib():
    for line in open('/proc/self/smaps_rollup'):
        if line.startswith('Anonymous'):
            return int(line.split()[1]) >> 10
big = torch.ones(16 << 18); del big  # a 16 MiB mapped block freed: glibc's mmap threshold rises past 2 MiB
blocks = [torch.ones(1 << 19) for _ in range(100)]  # 100 x 2 MiB, as a sweep's chunks: now in the heap
kept = blocks.pop()  # the heap's top stays in use, so free() alone cannot shrink it
del blocks
before = anonymous_mib()
print(release_freed_memory(), before, anonymous_mib())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="Linux's /proc")
def test_freed_sweep_chunks_go_back_to_the_system_before_training():
    """What a sweep (checks, fingerprint) frees stays in glibc's heap unless trimmed: every torchrun
    rank would carry it through the run. The trim before the first step hands it back."""
    out = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    ran, before, after = out.stdout.split()
    assert ran == "True"
    assert int(before) - int(after) > 150  # of the ~200 MiB freed
