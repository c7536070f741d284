"""data.standardize: per-feature (x - mean) / std with the training split's statistics, computed in
one chunked sweep, applied to every split, recorded in the checkpoint, undone in samples; and the
hint a dry run on raw values gives."""

import numpy as np
import pytest
import torch
from conftest import one_line_error
from test_trust import rewrite

import pyrovae
from pyrovae import DataError, load_dataset
from pyrovae.app.checkpoint import read_checkpoint
from pyrovae.app.cli import main
from pyrovae.data.rows import TensorRows
from pyrovae.data.splits import Standardization, StreamedSplit


def raw_table(n=300, seed=0):
    """Features in units of their own: one around 1000, one around 0.01, one constant."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.normal(1000, 300, n), rng.normal(0.01, 0.002, n), np.full(n, 7.0),
                     rng.normal(-5, 1, n)], 1).astype(np.float32)


def test_the_statistics_of_a_chunked_sweep_are_numpys():
    x = raw_table(10_000)  # three chunks of a sweep
    split = StreamedSplit(TensorRows(torch.from_numpy(x)))
    stats = Standardization.of(split)
    assert np.allclose(stats.mean.numpy(), x.astype(np.float64).mean(0), rtol=1e-6)
    expected = x.astype(np.float64).std(0)
    expected[2] = 1.0  # a constant feature is only centred
    assert np.allclose(stats.std.numpy(), expected, rtol=1e-5)
    points = torch.from_numpy(x[:5])
    assert torch.allclose(stats.undo(stats.apply(points)), points, rtol=1e-5)


@pytest.mark.parametrize("in_memory", [True, False])
def test_every_split_takes_the_training_splits_statistics(tmp_path, in_memory):
    np.save(tmp_path / "t.npy", raw_table())
    data = load_dataset("file", str(tmp_path / "t.npy"), standardize=True, validation_fraction=0.2,
                        in_memory=in_memory)
    train = data.train_split.read(torch.arange(data.num_train)).double()
    assert torch.allclose(train.mean(0), torch.zeros(4, dtype=torch.double), atol=1e-5)
    assert torch.allclose(train.std(0, unbiased=False)[[0, 1, 3]], torch.ones(3, dtype=torch.double), atol=1e-4)
    raw = load_dataset("file", str(tmp_path / "t.npy"), validation_fraction=0.2, in_memory=True)
    for split in ("test", "validation"):  # mapped with the training statistics, not their own
        got = data.splits[split].read(torch.arange(len(data.splits[split])))
        want = data.standardization.apply(raw.splits[split].tensor)
        assert torch.allclose(got, want, atol=1e-5), split


def test_standardized_streamed_and_in_memory_points_are_the_same(tmp_path):
    np.save(tmp_path / "t.npy", raw_table())
    a = load_dataset("file", str(tmp_path / "t.npy"), standardize=True, in_memory=True)
    b = load_dataset("file", str(tmp_path / "t.npy"), standardize=True, in_memory=False)
    assert torch.equal(a.train, b.train.read(torch.arange(b.num_train)))


def test_standardize_with_binarize_is_one_line(tmp_path):
    np.save(tmp_path / "t.npy", raw_table())
    with pytest.raises(DataError, match="data.standardize = true with data.binarize = 'threshold'"):
        load_dataset("file", str(tmp_path / "t.npy"), standardize=True, binarize="threshold")


TABLE = ["--set", "data.name=file", "--set", "model.likelihood=gaussian", "--set", "train.batch_size=32",
         "--set", "train.epochs=3", "--set", "train.eval_every=1", "-q"]


def test_a_raw_table_suggests_standardize_and_then_trains_evaluates_and_samples(tmp_path, capsys):
    np.save(tmp_path / "t.npy", raw_table() * 10)  # values up to about 10^4: the dry run fails on them
    args = [*TABLE, "--set", f"data.path={tmp_path / 't.npy'}"]
    one_line_error(capsys, main(["train", *args, "--out", str(tmp_path / "raw")]), "try data.standardize = true")
    run = tmp_path / "run"
    assert main(["train", *args, "--set", "data.standardize=true", "--out", str(run)]) == 0, capsys.readouterr().err
    recorded = read_checkpoint(run / "checkpoint.pt")["data"]["standardization"]
    data = pyrovae.load_config(str(run / "config.toml")).load_data()
    assert np.allclose(recorded["mean"], data.standardization.mean.numpy()) and recorded["std"][2] == 1.0
    assert main(["evaluate", str(run), "--nll-samples", "3", "--iwae-samples", "2", "-q"]) == 0
    assert main(["sample", str(run), "-n", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["encode", str(run), "--out", str(tmp_path / "z.npz")]) == 0
    samples = Standardization.from_record(recorded, (4,)).undo(pyrovae.load(run).sample(200))
    assert abs(float(samples[:, 0].mean()) - 10_000) < 3_000  # in the data's units, not standardized ones


def test_a_forged_standardization_record_is_refused(tmp_path, capsys):
    np.save(tmp_path / "t.npy", raw_table())
    run = tmp_path / "run"
    assert main(["train", *TABLE, "--set", f"data.path={tmp_path / 't.npy'}", "--set", "data.standardize=true",
                 "--out", str(run)]) == 0

    def negative_std(state):
        state["data"]["standardization"]["std"][0] = -1.0

    rewrite(run, state_edit=negative_std)
    one_line_error(capsys, main(["sample", str(run), "--out", str(tmp_path / "s.png")]), "checkpoint")


def test_standardized_data_take_a_gaussian_likelihood_unless_the_config_names_one():
    config = pyrovae.load_config(None, ["data.standardize=true", "data.binarize=none"])
    assert config.model.likelihood == "gaussian"
    assert pyrovae.load_config(None, ["data.standardize=true", "data.binarize=none", "model.likelihood=laplace"]
                               ).model.likelihood == "laplace"
    with pytest.raises(pyrovae.ConfigError, match="data.binarize = 'dynamic'"):  # the digits' default: at once
        pyrovae.load_config(None, ["data.standardize=true"])
    assert pyrovae.load_config(None, []).model.likelihood != "gaussian"
