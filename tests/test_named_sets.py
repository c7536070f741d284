"""torchvision's data sets by name (fashion_mnist, kmnist, cifar10, svhn, celeba), read from fake
files in torchvision's layout (no network), and refused in one line when absent."""

import json
import pickle

import numpy as np
import pytest
import torch

import pyrovae
from pyrovae.app.cli import main
from pyrovae.errors import DataError


def write_idx(path, array: np.ndarray):
    """An IDX file as MNIST's raw files are (big-endian dims; 0x08 = unsigned byte)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_mnist_layout(root, kind, n_train=40, n_test=10):
    raw = root / kind / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def fake_cifar10(root, per_batch=8):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": list(range(per_batch))}
        (folder / name).write_bytes(pickle.dumps(batch))


def fake_svhn(root, n=20):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name in ("train_32x32.mat", "test_32x32.mat"):
        savemat(root / name, {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                              "y": (np.arange(n) % 10 + 1).reshape(-1, 1)})


def fake_celeba(root, n=12):
    image = pytest.importorskip("PIL.Image")
    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8), mode="RGB").save(folder / name)
        lines.append(f"{name} {0 if i < 8 else 1 if i < 10 else 2}")
    (root / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("name, kind", [("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_mnist_layout_sets_by_name(tmp_path, name, kind):
    fake_mnist_layout(tmp_path, kind)
    data = pyrovae.load_dataset(name, str(tmp_path), download=False)
    assert data.event_shape == (1, 28, 28) and (len(data.train), len(data.test)) == (40, 10)
    assert data.num_classes == 10 and data.binarize == "dynamic"
    raw = np.frombuffer((tmp_path / kind / "raw" / "train-images-idx3-ubyte").read_bytes()[16:], np.uint8)
    expected = torch.from_numpy(raw.reshape(40, 1, 28, 28).astype(np.float32)) * (1 / 255)
    streamed = pyrovae.load_dataset(name, str(tmp_path), download=False, binarize="none", in_memory=False)
    assert torch.equal(streamed.train[:], expected)  # uint8 pixels times 1/255


def test_cifar10_svhn_and_celeba_by_name(tmp_path, capsys):
    fake_cifar10(tmp_path / "c")
    cifar = pyrovae.load_dataset("cifar10", str(tmp_path / "c"), download=False)
    assert cifar.event_shape == (3, 32, 32) and (len(cifar.train), len(cifar.test)) == (40, 8)
    assert cifar.binarize == "none" and cifar.train_y.tolist()[:3] == [0, 1, 2]
    fake_svhn(tmp_path / "s")
    svhn = pyrovae.load_dataset("svhn", str(tmp_path / "s"), download=False)
    assert svhn.event_shape == (3, 32, 32) and svhn.train_y.tolist()[:10] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    fake_celeba(tmp_path / "f")
    faces = pyrovae.load_dataset("celeba", str(tmp_path / "f"), download=False, in_memory=False)
    assert faces.streamed and faces.event_shape == (3, 218, 178) and (len(faces.train), len(faces.test)) == (8, 2)
    code = main(["train", "--set", "data.name=cifar10", "--set", f"data.path={tmp_path / 'c'}", "--set",
                 "data.download=false", "--set", "model.likelihood=continuous_bernoulli", "--set",
                 "train.batch_size=8", "--set", "train.epochs=1", "--set", "model.encoder.hidden=[8]", "--set",
                 "model.decoder.hidden=[8]", "--out", str(tmp_path / "run"), "-q"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text())["test_elbo"] is not None


def test_a_cifar_batch_that_needs_code_is_refused(tmp_path):
    fake_cifar10(tmp_path)

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({"data": Payload()}))
    with pytest.raises(DataError, match="data_batch_3 is not a CIFAR-10 batch .*builtins.print"):
        pyrovae.load_dataset("cifar10", str(tmp_path), download=False)


@pytest.mark.parametrize("name, expected", [("fashion_mnist", "FashionMNIST not found"),
                                            ("kmnist", "KMNIST not found"), ("cifar10", "CIFAR-10 not found"),
                                            ("svhn", "SVHN not found"), ("celeba", "CelebA not found")])
def test_absent_named_sets_are_one_line(tmp_path, name, expected):
    with pytest.raises(DataError, match=expected) as info:
        pyrovae.load_dataset(name, str(tmp_path), download=False)
    assert "\n" not in str(info.value) and "data.download = false" in str(info.value)




def amat(path, rows, values=784, text=None):
    path.write_text(text if text is not None else "".join(" ".join("01"[(i + j) % 2] for j in range(values)) + "\n"
                                                            for i in range(rows)))


@pytest.mark.parametrize("damage, expected", [
    (lambda f: amat(f, 3, 783), "3 lines and 2349 values where static MNIST's train split has 50000 lines"),
    (lambda f: amat(f, 2, text="0 1 2\n"), "holds characters other than 0, 1 and white space"),
    (lambda f: amat(f, 2, text="01 1\n"), "where static MNIST's train split has 50000 lines of 784 values"),
])
def test_a_static_mnist_file_that_is_not_the_standard_one_is_one_line(tmp_path, damage, expected):
    damage(tmp_path / "binarized_mnist_train.amat")
    with pytest.raises(DataError, match=expected):
        pyrovae.load_dataset("static_mnist", path=str(tmp_path), download=False)
    (tmp_path / "binarized_mnist_train.amat").unlink()
    with pytest.raises(DataError, match="binarized_mnist_train.amat'?: no such file"):
        pyrovae.load_dataset("static_mnist", path=str(tmp_path), download=False)


def test_static_mnist_brings_its_validation_split_to_the_config():
    """Early stopping on the validation ELBO needs no validation_fraction (the data set has its own
    split), and a validation_fraction on top of it is one line."""
    config = pyrovae.load_config(None, ["data.name=static_mnist", "train.early_stopping={ patience = 50 }"])
    assert config.data.validation_fraction == 0
    with pytest.raises(pyrovae.ConfigError, match="needs a validation split"):
        pyrovae.load_config(None, ["data.name=mnist", "train.early_stopping={ patience = 50 }"])


VAMP_500 = {"name": "vamp", "num_pseudo_inputs": 500, "pseudo_input_range": [0.0, 1.0]}
PAPER_RANGE = [-6.0, 2.0]
GATED = {"name": "mlp", "hidden": [300, 300], "activation": "gated"}
FIELD = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "configs" / "field"


@pytest.mark.parametrize("row, family, prior", [("vae_static_mnist", "vae", "standard_normal"),
                                                ("vampprior_static_mnist", "vae", VAMP_500),
                                                ("hvae_static_mnist", "two_level_vae", "standard_normal"),
                                                ("hvae_vampprior_static_mnist", "two_level_vae", VAMP_500)])
def test_the_field_configs_state_the_vampprior_papers_protocol(row, family, prior):
    """examples/configs/field/: Tomczak & Welling (2018)'s settings, row by row."""
    config = pyrovae.load_config(str(FIELD / f"{row}.toml"))
    model = config.model.options
    assert (config.data.name, config.model.family, model["latent_dim"], model["prior"]) == \
        ("static_mnist", family, 40, prior)
    assert model["encoder"] == {**GATED, "log_var_range": PAPER_RANGE}
    if family == "vae":
        assert model["decoder"] == GATED
    else:
        assert model["decoder2"] == {**GATED, "log_var_range": PAPER_RANGE}
        assert (model["latent_dim2"], model["hidden"], model["activation"], model["log_var_range"]) == \
            (40, 300, "gated", PAPER_RANGE)
    assert (config.train.batch_size, config.train.kl_warmup_epochs, config.train.epochs) == (100, 100, 2000)
    assert (config.train.estimator, config.train.eval_every) == ("mc", 1)
    assert config.train.early_stopping == {"metric": "validation_elbo", "patience": 50}
    assert config.optim["name"] == "adam" and config.optim["lr"] == 5e-4


def test_a_field_config_trains(tmp_path):
    """The VampPrior row, on the digits for two steps (the protocol itself runs for days; the
    two-level family trains in tests/test_two_level.py)."""
    import tomllib

    from pyrovae.app.config_files import config_from_dict

    table = tomllib.loads((FIELD / "vampprior_static_mnist.toml").read_text())
    table["data"] = {"name": "digits", "validation_fraction": 0.2}
    table["train"].update(max_steps=2, progress=False)
    run = pyrovae.train(config_from_dict(table), tmp_path / "run")
    assert (run / "checkpoint.pt").is_file()


def test_static_mnist_is_sized_against_memory_before_a_byte_is_read(tmp_path, monkeypatch):
    import pyrovae.data.budget as budget

    amat(tmp_path / "binarized_mnist_train.amat", 3)
    monkeypatch.setattr(budget, "available_bytes", lambda device="cpu": 1000)
    with pytest.raises(DataError, match="the train split takes .* once decoded, more than"):
        pyrovae.load_dataset("static_mnist", path=str(tmp_path), download=False)


def test_an_encoders_log_var_range_is_a_hardtanh_in_value_and_gradient():
    """log sigma^2 = hardtanh(h, -6, 2) (the VampPrior paper's encoder): inside the range the
    network's output itself, outside it the bound, with no gradient there."""
    from pyrovae.parts.nets import MLPEncoder

    torch.manual_seed(0)
    free = MLPEncoder((12,), 3, hidden=[8], init_std=3.0)
    bounded = MLPEncoder((12,), 3, hidden=[8], log_var_range=[-6.0, 2.0])
    bounded.load_state_dict(free.state_dict())
    x = torch.rand(50, 12)
    raw = free(x)[1]
    log_var = bounded(x)[1]
    inside = (raw > -6) & (raw < 2)
    assert inside.any() and (raw < -6).any() and (raw > 2).any()  # the case tests all three parts
    assert torch.equal(log_var[inside], raw[inside])
    assert torch.equal(log_var[raw <= -6], torch.full_like(log_var[raw <= -6], -6.0))
    assert torch.equal(log_var[raw >= 2], torch.full_like(log_var[raw >= 2], 2.0))
    h = raw.detach().requires_grad_()
    torch.nn.functional.hardtanh(h, -6.0, 2.0).sum().backward()
    assert torch.equal(h.grad, inside.float())
    with pytest.raises(ValueError, match=r"log_var_range must be \[low, high\].*got \[2.0, -6.0\]"):
        MLPEncoder((12,), 3, log_var_range=[2.0, -6.0])


def test_a_vampprior_with_a_pseudo_input_range_reads_its_pseudo_inputs_clamped():
    """p(z) = (1/K) sum_k q(z | hardtanh(u_k, 0, 1)): the prior of pseudo-inputs outside [0, 1] is the
    prior of their clamped values, and the clamped pixels take no gradient."""
    from pyrovae import VAE

    torch.manual_seed(0)
    vae = VAE((6,), 2, prior={"name": "vamp", "num_pseudo_inputs": 4, "pseudo_input_range": [0.0, 1.0]})
    with torch.no_grad():
        pixels = torch.tensor([[-0.5, 0.2, 1.5, 0.7, 0.4, 3.0]] * 4)
        vae.prior.pseudo_inputs.copy_(pixels + 0.01 * torch.arange(4.0)[:, None])
    z = torch.randn(5, 2)
    vae.prior.distribution().log_prob(z).sum().backward()
    u = vae.prior.pseudo_inputs.detach()
    q = vae.posterior(u.clamp(0, 1))
    manual = torch.logsumexp(q.log_prob(z[:, None, :]), -1) - torch.log(torch.tensor(4.0))
    assert torch.allclose(vae.prior.distribution().log_prob(z), manual, atol=1e-6)
    outside = (u < 0) | (u > 1)
    assert outside.any() and torch.all(vae.prior.pseudo_inputs.grad[outside] == 0)
    assert torch.all(vae.prior.pseudo_inputs.grad[~outside] != 0)
