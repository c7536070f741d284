"""Where data sets come from: readers of each source into arrays and tensors, checked."""

import os
import pickle
import urllib.request
from pathlib import Path

import numpy as np
import torch

from pyrovae.data.budget import check_fits, declared_bytes
from pyrovae.data.regular import check_regular_files, open_regular
from pyrovae.errors import DataError, one_line, shown

#: what a message about missing data adds when the config may not download them
NO_DOWNLOAD = "(data.download = false)"

FREY_FACE_URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"


def load_digits():
    """scikit-learn's 8x8 digits: ``(1797, 1, 8, 8)`` grey levels in [0, 1] and their labels 0..9."""
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    return torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1), torch.from_numpy(digits.target).long()


def _mnist_like(kind: str, root: str, train: bool, download: bool):
    """One of torchvision's MNIST-layout sets (MNIST, FashionMNIST, KMNIST), or one line saying
    where it is looked for."""
    import torchvision.datasets

    raw = Path(root) / kind / "raw"
    if raw.is_dir():  # torchvision opens these by name: each must be a regular file (a FIFO would block it)
        check_regular_files(sorted(raw.iterdir()), f"data.path = {shown(root)}")
    try:
        return getattr(torchvision.datasets, kind)(root, train=train, download=download)
    except (RuntimeError, OSError) as e:
        hint = "" if download else f" {NO_DOWNLOAD}"
        raise DataError(f"data.path = {shown(root)}: {kind} not found or not downloadable{hint}: "
                        f"{one_line(str(e), 160) if str(e) else type(e).__name__}; torchvision expects "
                        f"{os.path.join(root, kind, 'raw')}/*-ubyte (with data.download = true the .gz "
                        "files there are enough: it checks and extracts them)") from None


def load_mnist(root: str, train: bool, download: bool = True):
    """MNIST through torchvision: ``(N, 1, 28, 28)`` grey levels in [0, 1] and their labels 0..9."""
    mnist = _mnist_like("MNIST", root, train, download)
    return mnist.data.float().div_(255.0).unsqueeze(1), mnist.targets.long()


def load_mnist_layout(kind: str, root: str, train: bool, download: bool = True):
    """FashionMNIST or KMNIST through torchvision: ``(N, 1, 28, 28)`` uint8 pixels (stored as
    they are; times 1/255 when read) and their labels 0..9."""
    images = _mnist_like(kind, root, train, download)
    return images.data.unsqueeze(1), images.targets.long()


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (CIFAR's batches): any other global is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"the data file needs the Python object {module}.{name}")
        return super().find_class(module, name)


CIFAR10_FOLDER = "cifar-10-batches-py"


def load_cifar10(root: str, train: bool, download: bool = True):
    """CIFAR-10 from torchvision's folder ``root/cifar-10-batches-py`` (downloaded there by
    torchvision if missing and ``download``): ``(N, 3, 32, 32)`` uint8 and labels 0..9. Its
    batches are pickles, read by an unpickler that builds arrays and nothing else."""
    folder = Path(root) / CIFAR10_FOLDER
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    if not all((folder / n).exists() for n in names):
        if not download:
            raise DataError(f"data.path = {shown(root)}: CIFAR-10 not found: expected {folder}/"
                            f"{'data_batch_1..5' if train else 'test_batch'} {NO_DOWNLOAD}")
        import torchvision.datasets

        try:
            torchvision.datasets.CIFAR10(root, train=train, download=True)
        except (RuntimeError, OSError) as e:
            raise DataError(f"data.path = {shown(root)}: CIFAR-10 not found and not downloadable "
                            f"({one_line(str(e), 120) or type(e).__name__}); put {CIFAR10_FOLDER} there") from None
    xs, ys = [], []
    for name in names:
        try:
            with open_regular(folder / name, f"data.path = {shown(root)}") as f:
                batch = _ArrayUnpickler(f, encoding="latin1").load()
            x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
        except DataError:
            raise
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError) as e:
            raise DataError(f"data.path = {shown(root)}: {folder / name} is not a CIFAR-10 batch "
                            f"({one_line(str(e), 120)})") from None
        xs.append(x)
        ys.append(y)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def load_svhn(root: str, train: bool, download: bool = True):
    """SVHN's cropped digits from ``root/{train,test}_32x32.mat`` (downloaded there by torchvision
    if missing and ``download``): ``(N, 3, 32, 32)`` uint8 and labels 0..9 (the files' 10 is 0)."""
    from scipy.io import loadmat

    file = Path(root) / ("train_32x32.mat" if train else "test_32x32.mat")
    if not file.exists():
        if not download:
            raise DataError(f"data.path = {shown(root)}: SVHN not found: expected {file} {NO_DOWNLOAD}")
        import torchvision.datasets

        try:
            torchvision.datasets.SVHN(root, split="train" if train else "test", download=True)
        except (RuntimeError, OSError) as e:
            raise DataError(f"data.path = {shown(root)}: SVHN not found and not downloadable "
                            f"({one_line(str(e), 120) or type(e).__name__}); put {file.name} there") from None
    try:
        with open_regular(file, f"data.path = {shown(root)}") as f:
            mat = loadmat(checked_mat(f, f"data.path = {shown(root)}"))
        x = np.ascontiguousarray(np.asarray(mat["X"], dtype=np.uint8).transpose(3, 2, 0, 1))
        y = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10
    except DataError:
        raise
    except Exception as e:  # scipy raises several types for a foreign or truncated file
        raise DataError(f"data.path = {shown(root)}: {file.name} is not SVHN's .mat file with X and y "
                        f"({type(e).__name__})") from None
    return torch.from_numpy(x), torch.from_numpy(y)


def celeba_files(root: str, train: bool, download: bool = True):
    """CelebA's aligned faces in torchvision's layout, ``root/celeba/img_align_celeba/*.jpg`` and
    ``list_eval_partition.txt`` (0 train, 1 valid, 2 test): the image files of a split."""
    folder = Path(root) / "celeba"
    partition = folder / "list_eval_partition.txt"
    if not partition.exists():
        if not download:
            raise DataError(f"data.path = {shown(root)}: CelebA not found: expected {partition} and "
                            f"{folder / 'img_align_celeba'} {NO_DOWNLOAD}")
        import torchvision.datasets

        try:
            torchvision.datasets.CelebA(root, split="all", download=True)
        except (RuntimeError, OSError, ImportError) as e:
            raise DataError(f"data.path = {shown(root)}: CelebA not found and not downloadable "
                            f"({one_line(str(e), 120) or type(e).__name__}); put torchvision's celeba folder "
                            "there") from None
    wanted = "0" if train else "2"
    files = []
    with open_regular(partition, f"data.path = {shown(root)}") as f:
        check_fits(os.fstat(f.fileno()).st_size, f"data.path = {shown(root)}", partition.name)
        text = f.read().decode(errors="replace")
    for number, line in enumerate(text.splitlines()):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"data.path = {shown(root)}: {partition.name} line {number + 1}: expected 'FILE SPLIT'")
        if fields[1] == wanted:
            files.append(folder / "img_align_celeba" / fields[0])
    missing = next((f for f in files if not f.exists()), None)
    if missing is not None:
        raise DataError(f"data.path = {shown(root)}: {missing.name}, listed in {partition.name}, is missing")
    return files


def checked_mat(f, where: str):
    """A MATLAB file's variables checked against the memory budget before any is read (a
    compressed variable can inflate far beyond the file's size): their declared shapes, at 8
    bytes a value. Returns ``f``, rewound."""
    from scipy.io import whosmat

    try:
        variables = whosmat(f)
    except Exception as e:  # scipy raises several types for a foreign or truncated file
        raise DataError(f"{where}: not a MATLAB .mat file ({type(e).__name__})") from None
    check_fits(sum(declared_bytes(shape, 8) for _, shape, _ in variables), where, "its variables")
    f.seek(0)
    return f


def fetched(file: Path, url: str, download: bool, hint: str) -> Path:
    """``file``, downloaded from ``url`` first where it is missing and ``download`` (whole or not at
    all: written beside it, then renamed); a missing file without a download is one line, as is a
    download that fails (``hint``: what to put there instead)."""
    if file.exists():
        return file
    where = f"data.path = {shown(str(file))}"
    if not download:
        raise DataError(f"{where}: no such file {NO_DOWNLOAD}")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".part")
        urllib.request.urlretrieve(url, tmp)
        os.replace(tmp, file)
    except OSError as e:
        raise DataError(f"{where}: not found and download from {url} failed ({e}); {hint}") from None
    return file


def load_frey_face(path: str, download: bool = True) -> torch.Tensor:
    """Frey Face as ``(1965, 1, 28, 20)`` grey levels in [0, 1], from ``frey_rawface.mat``."""
    from scipy.io import loadmat

    file = Path(path)
    if file.is_dir() or not file.suffix:
        file = file / "frey_rawface.mat"
    fetched(file, FREY_FACE_URL, download, "put frey_rawface.mat there")
    try:
        with open_regular(file, f"data.path = {shown(str(file))}") as f:
            ff = loadmat(checked_mat(f, f"data.path = {shown(str(file))}"))["ff"]
    except DataError:
        raise
    except Exception as e:  # scipy raises several types for a foreign or truncated file
        raise DataError(f"data.path = {shown(str(file))}: not a Frey Face .mat file with variable 'ff' ({e})") from None
    return torch.from_numpy(ff.T.reshape(-1, 1, 28, 20).astype(np.float32) / 255.0)


#: Larochelle & Murray's fixed binarization of MNIST ("static MNIST"), at its usual address
STATIC_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"
#: its splits' sizes: train, valid, test
STATIC_MNIST_ROWS = {"train": 50_000, "valid": 10_000, "test": 10_000}


def load_static_mnist(path: str, split: str, download: bool = True) -> torch.Tensor:
    """One split (``train``, ``valid``, ``test``) of static MNIST as ``(N, 1, 28, 28)`` float32 in
    {0, 1}, from ``binarized_mnist_{split}.amat`` in the folder ``path`` (downloaded there from
    :data:`STATIC_MNIST_URL` if missing and ``download``). The file is text, one image a line:
    784 values 0 or 1 separated by white space. Anything else (another character, a line of
    another length, a row count other than the split's) is one line naming the file."""
    file = Path(path) / f"binarized_mnist_{split}.amat"
    where = f"data.path = {shown(str(file))}"
    fetched(file, STATIC_MNIST_URL.format(split=split), download,
            "put the three binarized_mnist_{train,valid,test}.amat files there")
    rows = STATIC_MNIST_ROWS[split]
    with open_regular(file, where) as f:
        size = os.fstat(f.fileno()).st_size
        if size > rows * 784 * 4:  # "0 " a value, and room for other spacing: larger is another file
            raise DataError(f"{where}: {size} bytes, more than {rows} lines of 784 values 0 or 1 take")
        # the text, a mask of it and the float32 images, sized before a byte is read
        check_fits(2 * size + rows * 784 * 4, where, f"the {split} split")
        text = np.frombuffer(f.read(), dtype=np.uint8)
    kind = np.zeros(256, dtype=np.uint8)  # each byte's kind: 1 a value ("0", "1"), 2 white space, 0 else
    kind[[ord("0"), ord("1")]] = 1
    kind[[ord(" "), ord("\t"), ord("\r"), ord("\n")]] = 2
    kinds = kind[text]
    if not bool(kinds.all()):
        raise DataError(f"{where}: holds characters other than 0, 1 and white space; static MNIST's .amat "
                        "files hold 784 values 0 or 1 a line")
    digit = kinds == 1
    lines = int(np.count_nonzero(text == ord("\n"))) + int(text.size > 0 and text[-1] != ord("\n"))
    values = text[digit] - ord("0")
    # a value is one character, "0" or "1", never "01"
    if bool((digit[1:] & digit[:-1]).any()) or lines != rows or values.size != rows * 784:
        raise DataError(f"{where}: {lines} lines and {values.size} values where static MNIST's {split} split has "
                        f"{rows} lines of 784 values 0 or 1")
    return torch.from_numpy(values.reshape(rows, 1, 28, 28).astype(np.float32))
