"""Figures of a run: image grids (reconstructions, samples), the 2-D manifold, the ELBO curve."""

import math
import warnings
from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import norm  # noqa: E402

from pyrovae.app.files import atomic_write_bytes  # noqa: E402
from pyrovae.data.batch import as_batch  # noqa: E402
from pyrovae.errors import one_line  # noqa: E402


def save_figure(fig, path, dpi: int = 100) -> None:
    """Write a figure as PNG atomically (a temporary file renamed over ``path``: a symbolic link
    planted under that name is replaced, never written through), then close it."""
    try:
        atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        plt.close(fig)


def as_images(x: torch.Tensor, event_shape) -> np.ndarray:
    """Data points -> displayable images ``(n, H, W)`` (or ``(n, H, W, 3)`` for RGB).

    (1, H, W) and (H, W) are grey images; (3, H, W) is RGB; a vector of a square length is
    shown as a square, any other point as a one-pixel-high strip.
    """
    x = x.detach().float().cpu().reshape(-1, *event_shape)
    if len(event_shape) == 3 and event_shape[0] == 3:
        return x.permute(0, 2, 3, 1).clamp(0, 1).numpy()
    if len(event_shape) == 3:
        return x[:, 0].numpy()
    if len(event_shape) == 2:
        return x.numpy()
    flat = x.reshape(x.shape[0], -1)
    side = math.isqrt(flat.shape[1])
    if side * side == flat.shape[1]:
        return flat.reshape(-1, side, side).numpy()
    return flat.unsqueeze(1).numpy()


def image_grid(images: np.ndarray, ncols: int, pad: int = 1) -> np.ndarray:
    """Tile images ``(n, H, W[, 3])`` into one array with ``ncols`` columns and ``pad`` pixels between."""
    n, h, w = images.shape[:3]
    nrows = -(-n // ncols)
    grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, *images.shape[3:]), dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return grid


def save_grid(path, x: torch.Tensor, event_shape, ncols: int, title: str = "") -> None:
    """Save data points as one PNG grid; values in [0, 1] are shown as they are, others scaled to their range."""
    images = as_images(x, event_shape)
    lo, hi = float(images.min()), float(images.max())
    vmin, vmax = (0.0, 1.0) if lo >= 0 and hi <= 1 else (lo, hi)
    fig_w = max(3.0, min(12.0, ncols * 0.6))
    grid = image_grid(images, ncols)
    fig, ax = plt.subplots(figsize=(fig_w, fig_w * grid.shape[0] / grid.shape[1] + (0.4 if title else 0)))
    ax.imshow(grid, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def save_image_rows(path, panels, ncols: int, height: float = 1.4) -> None:
    """One figure of titled image grids stacked vertically; ``panels`` is a list of
    ``(images, title)`` with images as returned by :func:`as_images`, values in [0, 1]."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, height * len(panels)), squeeze=False)
    for ax, (images, title) in zip(axes[:, 0], panels):
        ax.imshow(image_grid(images, ncols), cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


@torch.no_grad()
def plot_reconstructions(path, vae, x, n: int = 10) -> None:
    """Test points (odd rows) above their reconstructions E[x | z = mu(x)] (even rows); x is a
    tensor or a :class:`~pyrovae.Batch`."""
    batch = as_batch(x)[: 2 * n]
    rec, x = vae.reconstruct(batch), batch.x
    rows = torch.cat([x[:n], rec[:n], x[n:], rec[n:]])
    save_grid(path, rows, vae.event_shape, n, "test data (rows 1, 3) and reconstructions (rows 2, 4)")


#: a figure of samples per class draws at most this many classes, one row each
MAX_CLASS_ROWS = 20


@torch.no_grad()
def plot_samples(path, vae, n: int = 64) -> None:
    """E[x | z] for z ~ p(z): the decoder's mean at prior samples; for a family that draws for
    labels (cvae, m2: ``num_classes``), one row per class of ``sqrt(n)`` samples each (the first
    :data:`MAX_CLASS_ROWS` classes)."""
    classes = min(getattr(vae, "num_classes", None) or 0, MAX_CLASS_ROWS)
    if classes:
        per_class = max(1, int(math.sqrt(n)))
        y = torch.arange(classes, device=vae.device).repeat_interleave(per_class)
        save_grid(path, vae.sample(len(y), y=y), vae.event_shape, per_class,
                  "samples E[x | z, y], z ~ p(z): row k has y = k")
        return
    save_grid(path, vae.sample(n), vae.event_shape, int(math.sqrt(n)), f"{n} samples: E[x | z], z ~ p(z)")


@torch.no_grad()
def plot_manifold(path, vae, n: int = 15) -> None:
    """The learned 2-D manifold (the paper's Figure 4): decoder means over a grid of z whose
    coordinates are the inverse Gaussian CDF of evenly spaced probabilities in (0, 1)."""
    if vae.latent_dim != 2:
        raise ValueError("the manifold plot needs a 2-D latent space")
    u = norm.ppf(np.linspace(0.5 / n, 1 - 0.5 / n, n)).astype(np.float32)
    z1, z2 = np.meshgrid(u, u[::-1])
    z = torch.from_numpy(np.stack([z1.ravel(), z2.ravel()], -1)).to(vae.device)
    save_grid(path, vae.likelihood.mean(vae.decode(z)), vae.event_shape, n, "learned manifold: E[x | z] on a grid")


def plot_elbo(path, metrics: List[Dict]) -> None:
    """Train and test ELBO per datapoint against training samples seen (the paper's Figure 2)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, style in (("train_elbo", "-"), ("test_elbo", "--")):
        pts = [(m["samples_seen"], m[key]) for m in metrics if m.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), style, marker="o", markersize=3, label=key.replace("_", " "))
    ax.set_xlabel("training samples evaluated")
    ax.set_ylabel("ELBO per datapoint (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


class FigureWarning(UserWarning):
    """A figure of a finished run could not be drawn (the run itself is complete)."""


def plot_run(run_dir, vae, test_x: torch.Tensor, metrics: List[Dict]) -> List[str]:
    """Write every figure of a run folder; returns the file names written. A figure that cannot
    be drawn (a family's sample or reconstruction failing, a full disk) is a :class:`FigureWarning`
    that names it and why, and the others are still drawn: a finished run never fails on a figure."""
    run_dir = Path(run_dir)
    figures = [("reconstructions.png", lambda path: plot_reconstructions(path, vae, test_x)),
               ("samples.png", lambda path: plot_samples(path, vae)),
               ("elbo.png", lambda path: plot_elbo(path, metrics))]
    if getattr(vae, "latent_dim", None) == 2 and hasattr(vae, "decode") and not getattr(vae, "num_classes", None):
        figures.append(("manifold.png", lambda path: plot_manifold(path, vae)))
    names = []
    for name, draw in figures:
        try:
            draw(run_dir / name)
            names.append(name)
        except Exception as e:  # a family's own sample or reconstruct can fail in any way
            plt.close("all")
            warnings.warn(f"{run_dir / name}: not drawn ({type(e).__name__}: {one_line(str(e), 200)}); the run is "
                          "complete", FigureWarning, stacklevel=2)
    return names
