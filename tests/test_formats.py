"""Every file format of data.name = "file" trains from the CLI, from small files the tests write;
bad data in any of them is one line naming the file and what is wrong."""

import json

import numpy as np
import pytest
import torch

import pyrovae
from pyrovae.app.cli import main
from pyrovae.errors import DataError

N, D = 60, 16
TRAIN = ["--set", "train.epochs=1", "--set", "train.batch_size=16", "--set", "model.encoder.hidden=[8]",
         "--set", "model.decoder.hidden=[8]", "--set", "data.binarize=dynamic", "-q"]


def grey(n=N, d=D, seed=0):
    return np.random.default_rng(seed).random((n, d)).astype(np.float32)


def labels(n=N):
    return np.arange(n) % 3


def write_sparse_npz(path):
    import scipy.sparse as sp

    sp.save_npz(path, sp.random(N, D, density=0.3, format="csr", random_state=0, dtype=np.float64))


def write_csc_npz(path):
    import scipy.sparse as sp

    sp.save_npz(path, sp.random(N, D, density=0.3, format="csc", random_state=0))


def write_h5(path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=(grey() * 255).astype(np.uint8), chunks=(8, D))
        f.create_dataset("y", data=labels())


def write_h5_splits(path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        f["train"], f["test"], f["train_y"], f["test_y"] = grey(), grey(12, seed=1), labels(), labels(12)


def write_h5ad(path):
    anndata = pytest.importorskip("anndata")
    import pandas as pd
    import scipy.sparse as sp

    adata = anndata.AnnData(X=sp.random(N, D, density=0.3, format="csr", random_state=0, dtype=np.float32))
    adata.obs["cell_type"] = pd.Categorical(np.array(["b", "t", "nk"])[labels()])
    adata.layers["counts"] = sp.csr_matrix(np.random.default_rng(0).poisson(0.2, (N, D)).clip(0, 1))
    adata.write_h5ad(path)


def write_zarr(path):
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(str(path), mode="w")
    group.create_array("x", shape=(N, 4, 4), chunks=(8, 4, 4), dtype="uint8")[:] = (grey() * 255).astype(
        np.uint8).reshape(N, 4, 4)
    group.create_array("y", shape=(N,), dtype="int64")[:] = labels()


def write_csv(path):
    x = grey()
    rows = ["label," + ",".join(f"g{i}" for i in range(D))]
    rows += [f"{y}," + ",".join(f"{v:.4f}" for v in row) for y, row in zip(labels(), x)]
    path.write_text("\n".join(rows) + "\n")


def write_images(path):
    image = pytest.importorskip("PIL.Image")
    x = (grey(d=64) * 255).astype(np.uint8).reshape(N, 8, 8)
    for i, (pixels, y) in enumerate(zip(x, labels())):
        folder = path / f"class_{y}"
        folder.mkdir(parents=True, exist_ok=True)
        image.fromarray(pixels, mode="L").save(folder / f"{i:03d}.png")


def write_jpegs(path):
    image = pytest.importorskip("PIL.Image")
    path.mkdir()
    rgb = (grey(d=8 * 8 * 3) * 255).astype(np.uint8).reshape(N, 8, 8, 3)
    for i, pixels in enumerate(rgb):
        image.fromarray(pixels, mode="RGB").save(path / f"{i:03d}.jpg")


FORMATS = {
    "sparse.npz": (write_sparse_npz, [], (D,), False),
    "csc.npz": (write_csc_npz, [], (D,), False),
    "data.h5": (write_h5, [], (D,), True),
    "splits.hdf5": (write_h5_splits, [], (D,), True),
    "cells.h5ad": (write_h5ad, ["--set", "data.label_key=cell_type"], (D,), True),
    "counts.h5ad": (write_h5ad, ["--set", "data.key=counts"], (D,), False),
    "store.zarr": (write_zarr, [], (4, 4), True),
    "table.csv": (write_csv, ["--set", "data.label_key=label"], (D,), True),
    "images": (write_images, [], (1, 8, 8), True),
    "photos": (write_jpegs, [], (3, 8, 8), False),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_trains_from_the_cli(tmp_path, capsys, name):
    write, extra, shape, labelled = FORMATS[name]
    path = tmp_path / name
    write(path)
    options = dict(label_key={"cells.h5ad": "cell_type", "table.csv": "label"}.get(name),
                   key="counts" if name == "counts.h5ad" else None)
    memory, streamed = (pyrovae.load_dataset("file", str(path), binarize="dynamic", in_memory=m, **options)
                        for m in (True, False))
    assert memory.event_shape == shape and (memory.train_y is not None) == labelled
    assert float(memory.train.min()) >= 0 and float(memory.train.max()) <= 1
    assert torch.equal(memory.train, streamed.train[:]) and torch.equal(memory.test, streamed.test[:])
    code = main(["train", "--set", "data.name=file", "--set", f"data.path={path}", "--set",
                 "data.in_memory=false", *extra, *TRAIN, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 0, err
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(record["test_elbo"])


def test_the_same_values_give_the_same_fingerprint_whatever_the_format(tmp_path):
    h5py = pytest.importorskip("h5py")
    zarr = pytest.importorskip("zarr")
    from pyrovae.app.fingerprint import data_fingerprint

    x = (grey() * 255).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = x
    zarr.save_array(str(tmp_path / "x.zarr"), x)
    np.savez(tmp_path / "x.npz", x=x)
    prints = [data_fingerprint(pyrovae.load_dataset("file", str(tmp_path / f"x{s}"), in_memory=False))
              for s in (".npy", ".h5", ".zarr", ".npz")]
    assert all(p == prints[0] for p in prints)


def test_sparse_rows_are_made_dense_a_batch_at_a_time(tmp_path):
    import scipy.sparse as sp

    matrix = sp.random(N, D, density=0.3, format="csr", random_state=1, dtype=np.float32)
    sp.save_npz(tmp_path / "m.npz", matrix)
    data = pyrovae.load_dataset("file", str(tmp_path / "m.npz"), in_memory=False)
    split = data.train_split
    index = torch.tensor([7, 2, 2, 40])
    expected = torch.from_numpy(matrix.toarray())[torch.from_numpy(split.index[index.numpy()].astype(np.int64))]
    assert torch.equal(split.read(index), expected)


@pytest.mark.parametrize("make, where, pattern", [
    (lambda p: p.write_text("a,b\n1,2\n3\n"), "bad.csv", "line 3 has 1 fields, the first \\(the header\\) 2"),
    (lambda p: p.write_text("1,2\n3,x\n"), "bad.csv", "line 2 holds a field that is not a number"),
    (lambda p: p.write_text("a,b\n1,2\n"), "bad.csv", "data.label_key = 'y': no such column"),
])
def test_bad_csv_is_one_line(tmp_path, make, where, pattern):
    make(tmp_path / where)
    with pytest.raises(DataError, match=pattern) as info:
        pyrovae.load_dataset("file", str(tmp_path / where), label_key="y" if "label_key" in pattern else None)
    assert where in str(info.value)


def test_a_corrupt_png_is_one_line_naming_it(tmp_path, capsys):
    write_images(tmp_path / "images")
    bad = sorted((tmp_path / "images" / "class_1").iterdir())[3]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    for in_memory in ("true", "false"):
        code = main(["train", "--set", "data.name=file", "--set", f"data.path={tmp_path / 'images'}",
                     "--set", f"data.in_memory={in_memory}", *TRAIN, "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and bad.name in err and "not a readable image" in err, err
        assert not (tmp_path / "run").exists()


def test_bad_hdf5_anndata_and_labels_are_one_line(tmp_path):
    h5py = pytest.importorskip("h5py")
    write_h5(tmp_path / "d.h5")
    with pytest.raises(DataError, match=r"data.key = 'nope': no such array in .*d.h5.*; it holds \['x', 'y'\]"):
        pyrovae.load_dataset("file", str(tmp_path / "d.h5"), key="nope")
    with h5py.File(tmp_path / "short.h5", "w") as f:
        f["x"], f["y"] = grey(), labels(N - 1)
    with pytest.raises(DataError, match=r"short.h5.*labels must be one number per point, shape \(60,\); got \(59,\)"):
        pyrovae.load_dataset("file", str(tmp_path / "short.h5"))
    write_h5ad(tmp_path / "c.h5ad")
    with pytest.raises(DataError, match="data.label_key = 'tissue': no such obs column .* it holds \\['cell_type'\\]"):
        pyrovae.load_dataset("file", str(tmp_path / "c.h5ad"), label_key="tissue")
    with pytest.raises(DataError, match=r"data.key = 'raw': no such matrix .*valid: X \(the default\), raw/X, "
                                        r"layers/NAME \(or NAME\), obsm/NAME; it holds \['X', 'layers/counts'\]"):
        pyrovae.load_dataset("file", str(tmp_path / "c.h5ad"), key="raw")


def test_negative_sparse_counts_for_a_bernoulli_likelihood_are_one_line(tmp_path, capsys):
    import scipy.sparse as sp

    counts = sp.random(N, D, density=0.3, format="csr", random_state=0)
    counts.data[:] = -1.0
    sp.save_npz(tmp_path / "neg.npz", counts)
    code = main(["train", "--set", "data.name=file", "--set", f"data.path={tmp_path / 'neg.npz'}",
                 "--set", "data.in_memory=false", *TRAIN[:-3], "-q", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "outside the support of 'bernoulli'" in err, err
    assert not (tmp_path / "run").exists()


def test_a_missing_optional_package_names_the_extra(tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module

    def without_h5py(name, *args):
        if name == "h5py":
            raise ImportError("No module named 'h5py'")
        return real(name, *args)

    (tmp_path / "d.h5").write_bytes(b"")
    monkeypatch.setattr(importlib, "import_module", without_h5py)
    with pytest.raises(DataError, match=r"needs the package 'h5py': pip install \"pyrovae\[formats\]\""):
        pyrovae.load_dataset("file", str(tmp_path / "d.h5"))
