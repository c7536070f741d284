"""AnnData files as scanpy users have them: the current layout (written by anndata) and the older
ones of scanpy's bundled files (AnnData 0.6: obs and obsm as record arrays, categories in uns,
raw.X; AnnData 0.7: categorical codes beside obs/__categories), with data.key naming X, raw/X,
layers/NAME and obsm/NAME. Each layout is written here with h5py as those versions wrote it."""

import numpy as np
import pytest

from pyrovae import DataError, load_dataset

h5py = pytest.importorskip("h5py")

N, D = 40, 6
CELL_TYPES = np.array([b"B", b"NK", b"T"])


def codes():
    return np.arange(N, dtype=np.int8) % 3


def counts(seed=0):
    return np.random.default_rng(seed).poisson(1.0, (N, D)).astype(np.float32)


def write_anndata_06(path):
    """AnnData 0.6: X dense, obs a record array (index, louvain codes, n_genes), categories in
    uns/louvain_categories, obsm a record array holding X_pca, raw.X at the top level."""
    with h5py.File(path, "w") as f:
        f["X"] = counts()
        obs = np.zeros(N, dtype=[("index", "S8"), ("louvain", "i1"), ("n_genes", "i4")])
        obs["index"] = [f"cell{i}".encode() for i in range(N)]
        obs["louvain"], obs["n_genes"] = codes(), np.arange(N)
        f["obs"] = obs
        f["uns/louvain_categories"] = CELL_TYPES
        obsm = np.zeros(N, dtype=[("X_pca", "f4", (2,))])
        obsm["X_pca"] = np.random.default_rng(1).normal(size=(N, 2))
        f["obsm"] = obsm
        f["raw.X"] = counts(2)


def write_anndata_07(path):
    """AnnData 0.7 (dataframe 0.1.0): obs a group whose categorical column holds codes, with an
    attribute pointing at obs/__categories/<name>."""
    with h5py.File(path, "w") as f:
        f["X"] = counts()
        obs = f.create_group("obs")
        obs.attrs["_index"] = "index"
        obs["index"] = np.array([f"cell{i}".encode() for i in range(N)])
        categories = obs.create_dataset("__categories/louvain", data=CELL_TYPES)
        obs["louvain"] = codes()
        obs["louvain"].attrs["categories"] = categories.ref
        f["obsm/X_pca"] = np.random.default_rng(1).normal(size=(N, 2)).astype(np.float32)
        f["raw/X"] = counts(2)
        f["layers/spliced"] = counts(3)


@pytest.mark.parametrize("write", [write_anndata_06, write_anndata_07])
def test_older_layouts_read_labels_and_every_matrix(tmp_path, write):
    path = tmp_path / "pbmc.h5ad"
    write(path)
    data = load_dataset("file", str(path), label_key="louvain", test_fraction=0.25, in_memory=True)
    everything = np.concatenate([data.train_y.numpy(), data.test_y.numpy()])
    assert sorted(everything.tolist()) == sorted(codes().tolist()) and data.num_classes == 3
    assert data.event_shape == (D,)
    pca = load_dataset("file", str(path), key="obsm/X_pca", test_fraction=0.25)
    assert pca.event_shape == (2,)
    raw = load_dataset("file", str(path), key="raw/X", test_fraction=0.25, in_memory=True)
    held = np.concatenate([raw.train.numpy(), raw.test.numpy()])
    assert sorted(held.sum(1).tolist()) == sorted(counts(2).sum(1).tolist())  # raw's values, not X's


def test_the_current_layout_takes_raw_layers_and_obsm(tmp_path):
    anndata = pytest.importorskip("anndata")
    import pandas as pd
    import scipy.sparse as sp

    adata = anndata.AnnData(X=sp.csr_matrix(counts()))
    adata.obs["cell_type"] = pd.Categorical(CELL_TYPES.astype(str)[codes()])
    adata.layers["counts"] = sp.csr_matrix(counts(3))
    adata.obsm["X_pca"] = np.random.default_rng(1).normal(size=(N, 3)).astype(np.float32)
    adata.raw = adata.copy()
    path = tmp_path / "current.h5ad"
    adata.write_h5ad(path)
    for key, shape in (("layers/counts", (D,)), ("counts", (D,)), ("obsm/X_pca", (3,)), ("raw/X", (D,))):
        assert load_dataset("file", str(path), key=key, label_key="cell_type").event_shape == shape, key
    with pytest.raises(DataError, match=r"it holds \['X', 'raw/X', 'layers/counts', 'obsm/X_pca'\]"):
        load_dataset("file", str(path), key="obsm/X_umap")
    with pytest.raises(DataError, match="data.key = 'var/X': no such matrix"):
        load_dataset("file", str(path), key="var/X")


def test_an_older_obs_without_the_column_names_what_it_holds(tmp_path):
    write_anndata_06(tmp_path / "old.h5ad")
    with pytest.raises(DataError, match=r"no such obs column .* it holds \['louvain', 'n_genes'\]"):
        load_dataset("file", str(tmp_path / "old.h5ad"), label_key="cell_type")
