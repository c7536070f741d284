"""Data sets: shapes, splits, binarization, user files and their errors, the real MNIST and Frey Face."""

import math

import numpy as np
import pytest
import torch
from conftest import pyrovae_in_cgroup, sparse_images

from pyrovae import DataError, load_dataset
from pyrovae.data.datasets import holdout_split


def test_digits_is_the_embedded_default():
    data = load_dataset()
    assert data.name == "digits" and data.event_shape == (1, 8, 8)
    assert data.train.shape[0] + data.test.shape[0] == 1797 and data.test.shape[0] == 180
    assert data.binarize == "dynamic"
    assert set(data.test.unique().tolist()) == {0.0, 1.0}  # test split binarized once
    assert data.train.min() >= 0 and data.train.max() <= 1 and len(data.train.unique()) > 2
    batch = data.train_points(torch.arange(50))
    assert set(batch.unique().tolist()) <= {0.0, 1.0}
    # a fixed split: the same test set every time
    torch.testing.assert_close(load_dataset().test, data.test)


def test_threshold_and_none():
    t = load_dataset(binarize="threshold")
    assert set(t.train.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(t.train_points(torch.arange(5)), t.train[:5])
    n = load_dataset(binarize="none")
    assert len(n.test.unique()) > 2


def test_holdout_split_is_a_partition():
    x = torch.arange(100).float().unsqueeze(1)
    train, test, train_y, test_y = holdout_split(x, 0.2, "data", x[:, 0].long() % 7)
    assert test.shape[0] == 20 and train.shape[0] == 80
    assert sorted(torch.cat([train, test]).squeeze(1).tolist()) == list(range(100))
    assert torch.equal(train_y, train[:, 0].long() % 7) and torch.equal(test_y, test[:, 0].long() % 7)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt"])
def test_user_files(tmp_path, suffix):
    x = np.random.rand(50, 6).astype(np.float64)
    path = tmp_path / f"x{suffix}"
    if suffix == ".npy":
        np.save(path, x)
    elif suffix == ".npz":
        np.savez(path, train=x[:40], test=x[40:])
    else:
        torch.save(torch.from_numpy(x), path)
    data = load_dataset("file", str(path))
    assert data.event_shape == (6,) and data.train.dtype == torch.float32
    assert data.train.shape[0] + data.test.shape[0] == 50
    if suffix == ".npz":
        assert data.test.shape[0] == 10


@pytest.mark.parametrize("make, pattern", [
    (lambda p: None, "no such file"),
    (lambda p: np.save(p, np.array(["a", "b"])), "expected a numeric array"),
    (lambda p: np.save(p, np.arange(5.0)), r"expected an array of shape \(N, \.\.\.\)"),
    (lambda p: np.save(p, np.array([[1.0, np.nan]] * 10)), "NaN or infinite"),
    (lambda p: np.save(p, np.ones((1, 3))), "leaves an empty split"),
    (lambda p: p.write_bytes(b"not numpy"), "not a .npy file"),
])
def test_bad_user_files(tmp_path, make, pattern):
    path = tmp_path / "x.npy"
    make(path)
    with pytest.raises(DataError, match=pattern) as info:
        load_dataset("file", str(path))
    assert "x.npy" in str(info.value)


def test_bad_npz_and_suffix(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.ones((4, 2)), b=np.ones((4, 2)))
    with pytest.raises(DataError, match=r"expected one array \(and its labels 'y'\), or 'train'"):
        load_dataset("file", str(tmp_path / "two.npz"))
    np.savez(tmp_path / "mismatch.npz", train=np.ones((4, 2)), test=np.ones((4, 3)))
    with pytest.raises(DataError, match="test points"):
        load_dataset("file", str(tmp_path / "mismatch.npz"))
    np.savez(tmp_path / "empty.npz", train=np.ones((4, 2)), test=np.ones((0, 2)))
    with pytest.raises(DataError, match="test split of 'file' is empty"):
        load_dataset("file", str(tmp_path / "empty.npz"))
    (tmp_path / "x.txt").write_text("1,2\n")
    with pytest.raises(DataError, match="unsupported file type '.txt'; valid: .csv, .h5, .h5ad, .hdf5, .npy, .npz"):
        load_dataset("file", str(tmp_path / "x.txt"))
    np.save(tmp_path / "big.npy", np.full((10, 2), 3.0))
    with pytest.raises(DataError, match="binarize = 'dynamic'.*outside \\[0, 1\\]"):
        load_dataset("file", str(tmp_path / "big.npy"), binarize="dynamic")


def test_missing_real_data_sets_fail_clearly(tmp_path):
    with pytest.raises(DataError, match="MNIST not found"):
        load_dataset("mnist", str(tmp_path), download=False)
    with pytest.raises(DataError, match="no such file"):
        load_dataset("frey_face", str(tmp_path), download=False)


def test_mnist_through_torchvision(mnist_root):
    data = load_dataset("mnist", str(mnist_root))
    assert data.train.shape == (60000, 1, 28, 28) and data.test.shape == (10000, 1, 28, 28)
    assert set(data.test[:100].unique().tolist()) == {0.0, 1.0}
    grey = load_dataset("mnist", str(mnist_root), binarize="none")
    assert 0.0 <= grey.train.min() and grey.train.max() == 1.0


def test_frey_face_from_the_mat_file(frey_file):
    data = load_dataset("frey_face", str(frey_file))
    assert data.event_shape == (1, 28, 20) and data.train.shape[0] + data.test.shape[0] == 1965
    assert data.binarize == "none" and 0.0 < data.train.min() and data.train.max() < 1.0
    # the folder works as well as the file
    assert load_dataset("frey_face", str(frey_file.parent)).train.shape == data.train.shape


def test_frey_face_download_path(tmp_path, frey_file, monkeypatch):
    """The real download code, with the network replaced by a copy of the shared file."""
    import shutil
    import urllib.request

    from pyrovae.data.sources import FREY_FACE_URL

    calls = []

    def fake_urlretrieve(url, filename):
        calls.append(url)
        shutil.copyfile(frey_file, filename)

    monkeypatch.setattr(urllib.request, "urlretrieve", fake_urlretrieve)
    data = load_dataset("frey_face", str(tmp_path / "faces"))
    assert calls == [FREY_FACE_URL] and (tmp_path / "faces" / "frey_rawface.mat").is_file()
    assert data.train.shape[0] + data.test.shape[0] == 1965

    def offline(url, filename):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    with pytest.raises(DataError, match="download from .* failed .*network is unreachable"):
        load_dataset("frey_face", str(tmp_path / "elsewhere"))
    assert not list((tmp_path / "elsewhere").glob("*.mat"))


def test_uint8_pixels_are_scaled_to_the_unit_interval_and_data_scale_overrides(tmp_path):
    pixels = np.arange(40 * 4, dtype=np.uint8).reshape(40, 4)
    np.save(tmp_path / "pixels.npy", pixels)
    data = load_dataset("file", str(tmp_path / "pixels.npy"), test_fraction=0.25)
    both = torch.cat([data.train, data.test])
    assert both.dtype == torch.float32 and float(both.max()) == pytest.approx(159 / 255)
    assert sorted((both * 255).round().flatten().tolist()) == list(range(160))  # every value, scaled
    halves = load_dataset("file", str(tmp_path / "pixels.npy"), test_fraction=0.25, scale=0.5)
    assert float(torch.cat([halves.train, halves.test]).max()) == 79.5
    np.save(tmp_path / "counts.npy", pixels.astype(np.int64))  # other integer types are counts: unscaled
    assert float(load_dataset("file", str(tmp_path / "counts.npy"), test_fraction=0.25).train.max()) <= 159


def test_data_key_and_label_key_pick_arrays_in_a_file_that_holds_several(tmp_path, capsys):
    from pyrovae.app.cli import main

    x, other, labels = np.random.rand(30, 3), np.random.rand(30, 5), np.arange(30) % 3
    np.savez(tmp_path / "several.npz", pixels=x, features=other, classes=labels)
    data = load_dataset("file", str(tmp_path / "several.npz"), key="features", label_key="classes")
    assert data.event_shape == (5,) and data.num_classes == 3
    assert float(torch.cat([data.train, data.test]).sum()) == pytest.approx(other.sum(), rel=1e-5)
    with pytest.raises(DataError, match=r"data.key = 'pixel': no such array .* holds \['classes', 'features'"):
        load_dataset("file", str(tmp_path / "several.npz"), key="pixel")
    np.save(tmp_path / "one.npy", x)
    with pytest.raises(DataError, match="a .npy file holds one array"):
        load_dataset("file", str(tmp_path / "one.npy"), key="x")
    assert main(["train", "--set", "data.name=mnist", "--set", "data.scale=0.5", "-q"]) == 2
    assert "data.scale: data set 'mnist' takes no scale" in capsys.readouterr().err
    assert main(["train", "--set", "data.name=file", "--set", f"data.path={tmp_path / 'one.npy'}", "--set",
                 "data.scale=-1", "-q"]) == 2
    assert "data.scale = -1: must be a finite number > 0" in capsys.readouterr().err


def test_a_file_too_large_for_the_memory_allowed_is_one_line_not_a_kill(tmp_path):
    """A real limit: the command runs in a cgroup (v1) of 900 MiB, and a uint8 file whose float32
    points need more is refused in one line with exit status 2, before anything is allocated, when
    data.in_memory = true asks for them in memory (by default they would be streamed)."""
    sparse_images(tmp_path / "big.npy", 250_000)
    proc, _ = pyrovae_in_cgroup(900 << 20, ["train", "--set", "data.name=file", "--set",
                                            f"data.path={tmp_path / 'big.npy'}", "--set", "data.in_memory=true",
                                            "--out", tmp_path / "run", "-q"], timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "250000 points of shape (28, 28) need about 747.7 MiB" in err, err
    assert "this process may still use" in err and not (tmp_path / "run").exists()


@pytest.mark.filterwarnings("ignore::pyrovae.PosteriorCollapseWarning")
def test_fit_trains_on_a_map_style_torch_dataset_with_or_without_labels_and_a_test_set():
    import pyrovae

    digits = load_dataset("digits", binarize="threshold")
    pixels = (digits.train * 255).round().to(torch.uint8)  # as an image set stores them
    labelled = torch.utils.data.TensorDataset(pixels, digits.train_y)
    test = torch.utils.data.TensorDataset((digits.test * 255).round().to(torch.uint8), digits.test_y)
    model = pyrovae.VAE(digits.event_shape, 2, encoder={"name": "mlp", "hidden": [32]},
                        decoder={"name": "mlp", "hidden": [32]})
    metrics = pyrovae.fit(model, labelled, test=test, epochs=1, progress=False)
    assert math.isfinite(metrics[-1]["test_elbo"])
    data = pyrovae.data.datasets.as_dataset(labelled, test)
    torch.testing.assert_close(data.train, digits.train)  # uint8 scaled by 1/255, the order kept
    assert torch.equal(data.train_y, digits.train_y) and data.num_classes == 10

    class Points(torch.utils.data.Dataset):  # items are x alone, as numpy arrays
        def __len__(self):
            return 50

        def __getitem__(self, i):
            return np.full((3,), i / 50, dtype=np.float32)

    alone = pyrovae.data.datasets.as_dataset(Points(), test_fraction=0.2)
    assert (len(alone.train), len(alone.test)) == (40, 10) and alone.train_y is None


def test_a_torch_dataset_that_cannot_be_read_is_one_line():
    from pyrovae.data.datasets import as_dataset

    class Ragged(torch.utils.data.Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return torch.zeros(1 + i // 20)

    with pytest.raises(DataError, match=r"fit: data: item \d+ has shape \(2,\), item 0 \(1,\); every item must"):
        as_dataset(Ragged())
    with pytest.raises(DataError, match="fit: data must be a pyrovae Dataset or a map-style torch Dataset, got list"):
        as_dataset([1, 2, 3])
    triples = torch.utils.data.TensorDataset(torch.zeros(4, 2), torch.zeros(4), torch.zeros(4))
    with pytest.raises(DataError, match=r"items must be x or \(x, y\); got a tuple of 3"):
        as_dataset(triples)


@pytest.mark.filterwarnings("ignore::pyrovae.PosteriorCollapseWarning")
def test_a_data_source_registered_in_a_plugin_trains_from_toml(tmp_path, capsys):
    import re
    from pathlib import Path

    from pyrovae.app.cli import main

    page = (Path(__file__).resolve().parents[1] / "docs" / "write-your-own.md").read_text()
    section = page[page.index("## A data source"):page.index("## Trust")]
    (tmp_path / "sines.py").write_text(re.findall(r"```python\n(.*?)```", section, re.S)[0])
    toml = re.findall(r"```toml\n(.*?)```", section, re.S)[0]
    (tmp_path / "run.toml").write_text(toml + "\n[train]\nepochs = 1\nprogress = false\n")
    assert main(["train", str(tmp_path / "run.toml"), "--out", str(tmp_path / "run")]) == 0
    record = [line for line in (tmp_path / "run" / "config.toml").read_text().splitlines() if "num_points" in line]
    assert record == ["num_points = 1000"]  # the source's option is part of the run's record
    assert main(["evaluate", str(tmp_path / "run"), "--plugins", str(tmp_path / "sines.py"), "--nll-samples", "5"]) == 0
    capsys.readouterr()
    code = main(["train", str(tmp_path / "run.toml"), "--out", str(tmp_path / "bad"), "--set", "data.num_point=5"])
    err = capsys.readouterr().err
    assert code == 2 and "data.num_point: unknown option of data set 'noisy_sines' (did you mean 'num_points'?); " \
        "valid options: length, num_points, seed" in err, err
    code = main(["train", str(tmp_path / "run.toml"), "--out", str(tmp_path / "bad"), "--set", "data.num_points=1"])
    assert code == 2 and "leaves an empty split" in capsys.readouterr().err


def test_a_source_may_return_a_pair_or_a_pyrovae_dataset_and_its_failures_are_one_line():
    import pyrovae

    x = torch.rand(30, 4)
    pyrovae.DATASETS.register("pair")(lambda: (torch.utils.data.TensorDataset(x[:20]),
                                               torch.utils.data.TensorDataset(x[20:])))
    pyrovae.DATASETS.register("whole")(lambda: pyrovae.Dataset("whole", x[:25], x[25:]))
    pyrovae.DATASETS.register("broken")(lambda: 1 / 0)
    assert (len(load_dataset("pair").test), len(load_dataset("whole").test)) == (10, 5)
    with pytest.raises(DataError, match=r"data set 'broken': its source fails \(ZeroDivisionError"):
        load_dataset("broken")
