"""Figures for any data: the latent space by PCA for latents above 2, reconstructions and samples
of vectors (tables, counts) as lines and heat maps, and a figure that does not apply left out."""

import matplotlib.image
import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

import pyrovae
from pyrovae import VAE, load_dataset
from pyrovae.app.cli import main
from pyrovae.app.plots import latent_plane, plot_run


def ink(png) -> float:
    """The share of a figure's pixels in colour (not white, grey or black: no axes, ticks or titles), the
    data drawn as points, lines or heat maps (a blank figure with its title and axes: 0)."""
    image = matplotlib.image.imread(png)[..., :3]
    return float((image.max(-1) - image.min(-1) > 0.2).mean())


def test_latent_plane_is_the_first_two_principal_components():
    means = torch.randn(300, 20) @ torch.randn(20, 20)
    points, share = latent_plane(means)
    pca = PCA(2).fit(means.double().numpy())
    want = pca.transform(means.double().numpy())
    for j in range(2):  # each component up to its sign
        sign = np.sign(points[:, j] @ want[:, j])
        np.testing.assert_allclose(points[:, j] * sign, want[:, j], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(share, pca.explained_variance_ratio_, rtol=1e-6)
    flat, none = latent_plane(means[:, :2])
    assert none is None and np.array_equal(flat, means[:, :2].numpy())
    with pytest.raises(ValueError, match="2 or more dimensions"):
        latent_plane(means[:, :1])


def test_a_20_dimensional_latent_gets_latent_png_coloured_by_label(tmp_path):
    data = load_dataset("digits")
    vae = VAE(data.event_shape, 20, encoder={"name": "mlp", "hidden": [32]}, decoder={"name": "mlp", "hidden": [32]})
    names = plot_run(tmp_path, vae, data.test_head(20), [{"samples_seen": 1, "train_elbo": -1.0}],
                     data.test_head(500))
    assert "latent.png" in names and "manifold.png" not in names
    pixels = (matplotlib.image.imread(tmp_path / "latent.png")[..., :3] * 10).round().reshape(-1, 3)
    assert ink(tmp_path / "latent.png") > 0.01 and len(np.unique(pixels, axis=0)) > 10  # ten labels' colours


def test_a_csv_table_gets_figures_that_are_not_blank(tmp_path, capsys):
    rng = np.random.default_rng(0)
    table = tmp_path / "table.csv"
    values = rng.uniform(0.05, 0.95, (300, 30))
    table.write_text("\n".join([",".join(f"f{i}" for i in range(30))]
                               + [",".join(f"{v:.3f}" for v in row) for row in values]) + "\n")
    run = tmp_path / "run"
    assert main(["train", "-q", "--out", str(run), "--set", "data.name=\"file\"", "--set", f"data.path=\"{table}\"",
                 "--set", "model.likelihood=\"continuous_bernoulli\"", "--set", "train.epochs=1",
                 "--set", "model.encoder.hidden=[16]", "--set", "model.decoder.hidden=[16]"]) == 0
    assert not (run / "manifold.png").exists() and capsys.readouterr().err == ""  # -q: no notes
    notes = []
    vae = pyrovae.load(run)
    names = plot_run(tmp_path, vae, load_dataset("file", str(table)).test_head(20), [], notes=notes)
    assert notes == ["manifold.png left out: the data (shape (30,)) are not images"]
    assert names == ["reconstructions.png", "samples.png", "elbo.png", "latent.png"]
    for name in ("reconstructions.png", "samples.png", "latent.png"):
        assert ink(run / name) > 0.005, name
    # a wide vector (a count matrix's row) is a heat map, as dense
    vae = VAE((500,), 3, likelihood="continuous_bernoulli", encoder={"name": "mlp", "hidden": [8]},
              decoder={"name": "mlp", "hidden": [8]})
    plot_run(tmp_path, vae, torch.rand(20, 500), [])
    assert ink(tmp_path / "reconstructions.png") > 0.2 and ink(tmp_path / "samples.png") > 0.2
