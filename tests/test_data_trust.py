"""A data file reads only itself, every read is bounded, nothing hangs: each attack tried for
real, with h5py's external storage, external links and virtual datasets, compressed zarr chunks
and .npz entries that inflate past the budget, FIFOs and character devices in every format,
symbolic links out of folders, and files that declare more than they hold."""

import contextlib
import os
import signal
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error
from test_trust import rewrite

import pyrovae.data.budget
from pyrovae import DataError, load_dataset
from pyrovae.app.cli import main
from pyrovae.data.formats import _csv

h5py = pytest.importorskip("h5py")


@contextlib.contextmanager
def no_hang(seconds=30):
    """Fail (instead of hanging the suite) if the block blocks."""
    def stop(*_):
        raise AssertionError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def load(path, **options):
    with no_hang():
        return load_dataset("file", path=str(path), in_memory=False, **options)


@pytest.fixture
def small_budget(monkeypatch):
    """A 64 MiB memory budget for what a file declares (pyrovae.data.budget reads the room it has)."""
    monkeypatch.setattr(pyrovae.data.budget, "available_bytes", lambda device="cpu": 64 << 20)


@pytest.fixture
def secret(tmp_path):
    """Files a hostile data file would point at: raw bytes and an HDF5 dataset."""
    raw = tmp_path / "secret.bin"
    raw.write_bytes(np.arange(40, dtype=np.float32).tobytes())
    with h5py.File(tmp_path / "secret.h5", "w") as f:
        f["data"] = np.arange(40, dtype=np.float32).reshape(10, 4)
    return tmp_path


# -- every data path is a regular file or a folder, checked on an open that cannot block -----------
SUFFIXES = (".npy", ".npz", ".pt", ".csv", ".h5", ".hdf5", ".h5ad")


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_a_device_is_refused_in_every_format(tmp_path, suffix, kind):
    path = tmp_path / f"data{suffix}"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    with pytest.raises(DataError, match="FIFO|character device|not a regular file") as e:
        load(path)
    assert str(path.name) in str(e.value) or "data.path" in str(e.value)


def test_fifos_and_devices_inside_folders_are_refused(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(images / "a.png")
    os.mkfifo(images / "b.png")
    with pytest.raises(DataError, match="b.png.*FIFO"):
        load(images)
    zarr = pytest.importorskip("zarr")
    store = tmp_path / "x.zarr"
    zarr.open_array(str(store), mode="w", shape=(8, 4), chunks=(4, 4), dtype="f4")[:] = 1.0
    chunk = next(p for p in store.rglob("*") if p.is_file() and p.name not in ("zarr.json", ".zarray", ".zattrs"))
    chunk.unlink()
    os.mkfifo(chunk)
    with pytest.raises(DataError, match="is a FIFO"):
        load(store)


def test_a_foreign_folder_that_names_a_fifo_is_one_line(run_copy, tmp_path, capsys):
    fifo = tmp_path / "points.npy"
    os.mkfifo(fifo)

    def to_fifo(d):
        d["data"] = {**d["data"], "name": "file", "path": str(fifo)}
        d["data"].pop("download", None)

    rewrite(run_copy, config_edit=to_fifo)
    for argv in (["evaluate", str(run_copy), "-q"], ["encode", str(run_copy), "--out", str(tmp_path / "z.npz")],
                 ["train", "--out", str(run_copy), "--resume", "-q"]):
        with no_hang():
            one_line_error(capsys, main(argv), "is a FIFO")


def test_a_file_swapped_for_a_fifo_after_it_was_opened_is_refused(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.ones((50, 3), dtype=np.float32))
    data = load(path, test_fraction=0.2)
    rows = data.train_split.rows
    rows._fd = None  # as a reader process that opens its own descriptor
    path.unlink()
    os.mkfifo(path)
    with no_hang(), pytest.raises(DataError, match="FIFO"):
        rows.take(np.arange(3))


# -- HDF5 and .h5ad: no external storage, external links or virtual sources ----------------------
def test_hdf5_external_raw_storage_is_refused(tmp_path, secret):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", shape=(10, 4), dtype="f4", external=[(str(secret / "secret.bin"), 0, 160)])
    with pytest.raises(DataError, match=r"external file.*secret\.bin.*reads only itself"):
        load(path)


def test_hdf5_external_links_are_refused_and_name_what_they_point_at(tmp_path, secret):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["x"] = h5py.ExternalLink(str(secret / "secret.h5"), "/data")
    with pytest.raises(DataError, match=r"'/x' is an external link to '/data' in the file .*secret\.h5"):
        load(path)


def test_hdf5_virtual_datasets_are_refused(tmp_path, secret):
    path = tmp_path / "data.h5"
    layout = h5py.VirtualLayout(shape=(10, 4), dtype="f4")
    layout[:] = h5py.VirtualSource(str(secret / "secret.h5"), "data", shape=(10, 4))
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("x", layout)
    with pytest.raises(DataError, match=r"virtual, mapped from .*secret\.h5:data"):
        load(path)


def test_links_inside_the_file_are_followed(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["group/points"] = np.arange(40, dtype=np.float32).reshape(10, 4)
        f["x"] = h5py.SoftLink("/group/points")
    data = load(path, key="x", test_fraction=0.2)
    assert data.num_train == 8 and data.event_shape == (4,)


def h5ad(path, x=None, obs=None, layers=None):
    """A minimal AnnData file written with h5py: X, obs columns and layers (each a value or a link)."""
    with h5py.File(path, "w") as f:
        f["X"] = np.ones((10, 4), dtype=np.float32) if x is None else x
        group = f.create_group("obs")
        for name, value in (obs or {}).items():
            group[name] = value
        if layers:
            layer_group = f.create_group("layers")
            for name, value in layers.items():
                layer_group[name] = value


@pytest.mark.parametrize("where", ["X", "obs", "layers"])
def test_h5ad_links_out_of_the_file_are_refused_wherever_they_are(tmp_path, secret, where):
    link = h5py.ExternalLink(str(secret / "secret.h5"), "/data")
    path = tmp_path / "data.h5ad"
    h5ad(path, x=link if where == "X" else None, obs={"cell_type": link} if where == "obs" else None,
         layers={"counts": link} if where == "layers" else None)
    options = {"label_key": "cell_type"} if where == "obs" else {"key": "counts"} if where == "layers" else {}
    with pytest.raises(DataError, match=r"external link to '/data' in the file .*secret\.h5"):
        load(path, **options)


def test_a_sparse_h5ad_whose_parts_live_elsewhere_is_refused(tmp_path, secret):
    path = tmp_path / "data.h5ad"
    with h5py.File(path, "w") as f:
        x = f.create_group("X")
        x.attrs["encoding-type"], x.attrs["shape"] = "csr_matrix", (10, 4)
        x["data"] = h5py.ExternalLink(str(secret / "secret.h5"), "/data")
        x["indices"], x["indptr"] = np.zeros(40, dtype=np.int32), np.arange(0, 44, 4, dtype=np.int64)
        f.create_group("obs")
    with pytest.raises(DataError, match=r"external link"):
        load(path)


# -- sizes before bytes ----------------------------------------------------------------------------
def test_a_compressed_zarr_chunk_that_inflates_past_the_budget_is_refused(tmp_path, small_budget):
    zarr = pytest.importorskip("zarr")
    store = tmp_path / "big.zarr"
    array = zarr.open_array(str(store), mode="w", shape=(2048, 4096), chunks=(2048, 4096), dtype="f4")
    array[:] = 0.0  # 32 MiB of zeros: a few KB compressed
    assert sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) < 1 << 20
    with pytest.raises(DataError, match=r"one chunk of shape \(2048, 4096\) takes 32\.0 MiB"):
        load(store)


def test_a_compressed_npz_entry_that_inflates_past_the_budget_is_refused(tmp_path, small_budget):
    path = tmp_path / "big.npz"
    np.savez_compressed(path, x=np.zeros((4096, 4200), dtype=np.float32))  # 66 MiB inflated
    assert path.stat().st_size < 1 << 20
    with pytest.raises(DataError, match=r"its arrays takes [\d.]+ MiB once decoded.*nothing was read"):
        load(path)


def test_an_npz_entry_that_declares_more_than_it_holds_is_refused_before_allocating(tmp_path):
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), dtype=np.float64))
    header["shape"] = (10**10, 10)  # 800 GB declared, 16 bytes held
    buffer = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as archive:
        archive.writestr("x.npy", buffer.getvalue() + b"\0" * 16)
    with pytest.raises(DataError, match=r"declares shape \(10000000000, 10\)"):
        load(tmp_path / "lie.npz")


def test_an_hdf5_file_that_declares_10_to_the_10_rows_is_refused_before_anything_is_allocated(tmp_path):
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", shape=(10**10, 8), chunks=(1024, 8), dtype="f4")  # nothing written: a tiny file
    assert path.stat().st_size < 1 << 20
    with pytest.raises(DataError, match=r"declares 298\.0 GiB of values but holds 0 B, more than 1000 times"):
        load(path)


def test_points_whose_index_does_not_fit_are_refused_before_any_permutation(tmp_path, monkeypatch):
    monkeypatch.setattr(pyrovae.data.budget, "available_bytes", lambda device="cpu": 1 << 20)
    np.save(tmp_path / "long.npy", np.zeros((100_000, 1), dtype=np.float32))
    with pytest.raises(DataError, match=r"the index of its 100000 points \(as declared\) takes 2\.3 MiB"):
        load(tmp_path / "long.npy")


def test_a_sparse_matrix_that_declares_far_more_than_it_holds_is_refused(tmp_path):
    sparse = torch.sparse_coo_tensor(torch.zeros(2, 1, dtype=torch.long), torch.ones(1), (10**7, 10**6),
                                     check_invariants=True)
    torch.save(sparse, tmp_path / "bomb.pt")
    with pytest.raises(DataError, match=r"the sparse matrix: declares 36\.4 TiB of values but holds"):
        load(tmp_path / "bomb.pt")


def test_an_image_that_declares_a_huge_size_is_refused_before_it_is_decoded(tmp_path, small_budget):
    from PIL import Image

    for folder, name in (("first", "0.png"), ("later", "z.png")):
        images(tmp_path / folder, [f"{i}.png" for i in range(1, 20)])
        Image.new("1", (3000, 3000)).save(tmp_path / folder / name)  # 9 megapixels in a 1 KB file
    assert (tmp_path / "first" / "0.png").stat().st_size < 1 << 16
    with pytest.raises(DataError, match=r"0.png: an image of 3000x3000 takes .* \(0.25 of it for one chunk\)"):
        load(tmp_path / "first")  # the first image is read at once (its size is the points')
    data = load(tmp_path / "later")  # a small one first: the big one is refused when it is read
    with pytest.raises(DataError, match=r"z.png is \(1, 3000, 3000\) \(channels, height, width\), the first image"):
        for split in (data.train_split, data.test_split):
            list(split.chunks())


def test_labels_that_declare_more_than_memory_are_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(pyrovae.data.budget, "available_bytes", lambda device="cpu": 1 << 20)
    path = tmp_path / "labels.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((10, 4), dtype=np.float32)
        f["y"] = np.zeros(10**6, dtype=np.int64)  # 8 MB of labels against a 1 MiB budget
    with pytest.raises(DataError, match="its labels takes"):
        load(path, key="x", label_key="y")


def test_a_large_csv_is_read_in_bounded_memory(tmp_path):
    rows, width = 60_000, 10
    path = tmp_path / "table.csv"
    with open(path, "w") as f:
        f.write(",".join(f"c{i}" for i in range(width)) + "\n")
        for i in range(rows):
            f.write(",".join(str((i + j) % 7) for j in range(width)) + "\n")
    tracemalloc.start()
    try:
        points, _ = _csv(path, "data.path", None, None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    values = rows * width * 4  # the float32 table
    assert points.tensor.shape == (rows, width) and float(points.tensor[1, 0]) == 1.0
    assert peak < 3 * values + (4 << 20), peak  # parsed whole into Python lists, it took about 20 times more


def test_a_csv_larger_than_the_budget_is_refused_as_it_is_read(tmp_path, small_budget):
    path = tmp_path / "table.csv"
    line = ",".join(["1"] * 1000) + "\n"
    with open(path, "w") as f:
        f.writelines([line] * 10_000)  # 10 000 x 1000 float32 (40 MB), 80 MB with the joining copy
    with pytest.raises(DataError, match=r"its table \(more than \d+ rows of 1000 numbers as float32\)"):
        load(path)


def test_a_csv_without_line_breaks_is_refused_not_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr("pyrovae.data.formats.MAX_CSV_LINE", 1000)
    path = tmp_path / "one-line.csv"
    path.write_text(",".join(["1"] * 2000))
    with pytest.raises(DataError, match="line 1 is longer than 1000 characters"):
        load(path)


# -- folders read only what is inside them --------------------------------------------------------
def images(folder, names):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.full((4, 4), 7, dtype=np.uint8)).save(folder / name)


def test_an_image_link_out_of_the_folder_is_refused(tmp_path):
    images(tmp_path / "outside", ["secret.png"])
    images(tmp_path / "data", ["a.png", "b.png", "c.png"])
    (tmp_path / "data" / "d.png").symlink_to(tmp_path / "outside" / "secret.png")
    with pytest.raises(DataError, match=r"'d.png' is a symbolic link out of the folder"):
        load(tmp_path / "data")


def test_a_class_folder_linked_out_of_the_folder_is_refused(tmp_path):
    images(tmp_path / "outside", ["secret.png"])
    images(tmp_path / "data" / "cats", ["a.png", "b.png"])
    (tmp_path / "data" / "dogs").symlink_to(tmp_path / "outside")
    with pytest.raises(DataError, match="symbolic link out of the folder"):
        load(tmp_path / "data")


def test_links_inside_an_image_folder_are_read(tmp_path):
    images(tmp_path / "data", ["a.png", "b.png", "c.png", "d.png"])
    (tmp_path / "data" / "e.png").symlink_to(tmp_path / "data" / "a.png")
    assert load(tmp_path / "data", test_fraction=0.2).num_train == 4


def test_a_zarr_store_with_a_link_out_of_it_is_refused(tmp_path, secret):
    zarr = pytest.importorskip("zarr")
    store = tmp_path / "x.zarr"
    zarr.open_array(str(store), mode="w", shape=(8, 4), chunks=(4, 4), dtype="f4")[:] = 1.0
    chunk = next(p for p in store.rglob("*") if p.is_file() and p.name not in ("zarr.json", ".zarray", ".zattrs"))
    chunk.unlink()
    chunk.symlink_to(secret / "secret.bin")
    with pytest.raises(DataError, match="symbolic link out of the folder"):
        load(store)


# -- knobs with bounds, and values named by the setting that made them ------------------------------
def test_num_workers_has_a_bound(capsys):
    one_line_error(capsys, main(["train", "--set", "data.num_workers=100000"]),
                   "data.num_workers = 100000: must be a whole number in [0, 64]")
    with pytest.raises(DataError, match=r"num_workers = 1000: must be a whole number in \[0, 64\]"):
        load_dataset("digits", num_workers=1000)


@pytest.mark.parametrize("dtype, value", [(np.int32, 2**30), (np.float32, 1e30)])
def test_a_value_made_infinite_by_data_scale_names_data_scale(tmp_path, capsys, dtype, value):
    path = tmp_path / "x.npy"
    np.save(path, np.full((200, 3), value, dtype=dtype))
    one_line_error(capsys, main(["train", "--set", "data.name=file", "--set", f"data.path={path}",
                                 "--set", "data.scale=1e30", "-q"]),
                   "data.scale = 1e+30: makes finite values of")


def test_values_beyond_float32_are_named_as_such(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.full((20, 3), 1e300, dtype=np.float64))
    with pytest.raises(DataError, match="beyond float32's range"):
        load(path)


def test_genuinely_non_finite_values_are_still_the_datas(tmp_path):
    path = tmp_path / "x.npy"
    values = np.ones((20, 3), dtype=np.float32)
    values[3, 1] = np.nan
    np.save(path, values)
    with pytest.raises(DataError, match="contains NaN or infinite values"):
        load(path, scale=2.0)


def test_a_regular_file_still_trains(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).random((40, 6), dtype=np.float32))
    data = load(path, test_fraction=0.25)
    assert data.num_train == 30 and torch.isfinite(data.train_split.read(torch.arange(30))).all()
    assert Path(path).exists()


def test_a_column_major_npy_still_reads_through_the_checked_file(tmp_path):
    values = np.asfortranarray(np.arange(60, dtype=np.float32).reshape(20, 3))
    np.save(tmp_path / "f.npy", values)
    rows = load(tmp_path / "f.npy", test_fraction=0.2).train_split.rows
    assert np.array_equal(rows.take(np.array([0, 5])).numpy(), values[[0, 5]])


@pytest.mark.parametrize("name, layout", [
    ("cifar10", "cifar-10-batches-py/data_batch_1"),
    ("svhn", "train_32x32.mat"),
    ("frey_face", "frey_rawface.mat"),
    ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
])
def test_named_sets_refuse_a_fifo_where_their_files_are(tmp_path, name, layout):
    fifo = tmp_path / layout
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    if name == "cifar10":
        for i in range(2, 6):
            (fifo.parent / f"data_batch_{i}").write_bytes(b"")
    with no_hang(), pytest.raises(DataError, match="FIFO"):
        load_dataset(name, path=str(tmp_path if name != "frey_face" else fifo), download=False)


def test_evaluate_refuses_particles_a_trained_model_cannot_hold(run_copy, capsys):
    """The evaluation's memory estimate runs the trained model itself (on one point where its
    parameters are), so a huge --particles is one line, not an allocation failure."""
    one_line_error(capsys, main(["evaluate", str(run_copy), "-q", "--particles", "1000000000"]),
                   "--particles 1000000000: the test ELBO needs about")
