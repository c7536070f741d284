"""Figures of a run: reconstructions and samples (image grids for images; line or heat-map plots
for vectors: tables, count matrices), the 2-D manifold, the latent space (``latent.png``: the test
points' posterior means, by PCA when the latent has more than 2 dimensions), the ELBO curve."""

import math
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import norm  # noqa: E402

from pyrovae.app.files import (  # noqa: E402
    ELBO_PNG,
    EVALUATION,
    LATENT_PNG,
    MANIFOLD_PNG,
    RECONSTRUCTIONS_PNG,
    SAMPLES_PNG,
    atomic_write_bytes,
)
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
    title = textwrap.fill(title, width=int(fig_w * 12)) if title else ""  # a 9-point title, wrapped to the width
    lines = title.count("\n") + 1 if title else 0
    height = fig_w * grid.shape[0] / grid.shape[1] + 0.25 * lines + (0.15 if title else 0)
    fig, ax = plt.subplots(figsize=(fig_w, height))
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


def is_image(event_shape) -> bool:
    """Whether points of this shape are drawn as images: (H, W) and (C, H, W); a vector (a table's
    row, a cell's counts) is drawn as lines or a heat map."""
    return len(tuple(event_shape)) >= 2


#: vectors up to this length are drawn as lines; longer ones as heat maps
MAX_LINE_FEATURES = 64


def _feature_axes(ax, d: int) -> None:
    ax.set_xlabel("feature")
    ax.tick_params(labelsize=7)
    if d <= 20:
        ax.set_xticks(range(d))


def save_vector_rows(path, panels, title: str) -> None:
    """Rows of vectors as heat maps side by side, one colour scale; ``panels``: ``[(array (n, D), title)]``."""
    values = np.concatenate([a for a, _ in panels])
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 0.8, 3.6), squeeze=False)
    for ax, (array, name) in zip(axes[0], panels):
        image = ax.imshow(array, aspect="auto", cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1,
                          interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("point")
        _feature_axes(ax, array.shape[1])
    fig.colorbar(image, ax=list(axes[0]), shrink=0.9)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def _vectors(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().reshape(x.shape[0], -1).numpy()


@torch.no_grad()
def plot_reconstructions(path, vae, x, n: int = 10, undo: Optional[Callable] = None) -> None:
    """Test points above their reconstructions E[x | z = mu(x)]; x is a tensor or a
    :class:`~pyrovae.Batch`. Images: a grid (rows 1, 3 the data, rows 2, 4 the reconstructions);
    vectors: each point's values and its reconstruction as two lines (up to
    :data:`MAX_LINE_FEATURES` features), or the points and their reconstructions as two heat maps.
    ``undo`` maps both back to the data's units (``data.standardize``)."""
    batch = as_batch(x)[: 2 * n]
    undo = undo or _same
    rec, x = undo(vae.reconstruct(batch)), undo(batch.x)
    if is_image(vae.event_shape):
        rows = torch.cat([x[:n], rec[:n], x[n:], rec[n:]])
        save_grid(path, rows, vae.event_shape, n, "test data (rows 1, 3) and reconstructions (rows 2, 4)")
        return
    data, recs = _vectors(x), _vectors(rec)
    if data.shape[1] > MAX_LINE_FEATURES:
        save_vector_rows(path, [(data, "test data"), (recs, "reconstructions E[x | z = mu(x)]")],
                         f"{len(data)} test points and their reconstructions")
        return
    shown_points = min(len(data), 8)
    cols = min(4, shown_points)
    rows = -(-shown_points // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False, sharey=True)
    for i, ax in enumerate(axes.ravel()):
        if i >= shown_points:
            ax.set_axis_off()
            continue
        ax.plot(data[i], "o-", markersize=2.5, linewidth=1, label="data")
        ax.plot(recs[i], "-", linewidth=1.5, label="reconstruction")
        ax.set_title(f"test point {i}", fontsize=8)
        _feature_axes(ax, data.shape[1])
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("test data and reconstructions E[x | z = mu(x)]", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


#: a figure of samples per class draws at most this many classes, one row each
MAX_CLASS_ROWS = 20


@torch.no_grad()
def plot_samples(path, vae, n: int = 64, undo: Optional[Callable] = None, given=None) -> None:
    """E[x | z] for z ~ p(z): the decoder's mean at prior samples; for a family that draws for
    labels (cvae, m2: ``num_classes``), one row per class of ``sqrt(n)`` samples each (the first
    :data:`MAX_CLASS_ROWS` classes). ``undo`` maps them back to the data's units. A family whose
    model needs an input (:class:`~pyrovae.models.base.NeedsInput`) is sampled given the points of
    ``given`` (test points), and the figure says so."""
    from pyrovae.models.base import NeedsInput

    try:
        _plot_prior_samples(path, _Undone(vae, undo) if undo is not None else vae, n)
    except NeedsInput:
        if given is None:
            raise
        points = as_batch(given)
        samples = vae.sample(len(points), batch=points)
        samples = undo(samples) if undo is not None else samples
        if is_image(vae.event_shape):
            save_grid(path, samples, vae.event_shape, max(1, int(math.sqrt(len(points)))),
                      f"samples given {len(points)} test points (the model conditions on its input)")
        else:
            save_vector_rows(path, [(_vectors(samples), f"{len(points)} samples given test points")],
                             "samples given test points (the model conditions on its input)")


def _plot_prior_samples(path, vae, n: int) -> None:
    """:func:`plot_samples` from the prior: a grid, or heat-map rows for vectors; by class where there are classes."""
    classes = min(getattr(vae, "num_classes", None) or 0, MAX_CLASS_ROWS)
    if not is_image(vae.event_shape):  # vectors: one heat-map row per sample (sorted by class where there are classes)
        if classes:
            per_class = max(1, int(math.sqrt(n)))
            y = torch.arange(classes, device=vae.device).repeat_interleave(per_class)
            save_vector_rows(path, [(_vectors(vae.sample(len(y), y=y)), f"{per_class} samples per class, "
                                     "in class order")], "samples E[x | z, y], z ~ p(z)")
        else:
            save_vector_rows(path, [(_vectors(vae.sample(n)), f"{n} samples")], "samples E[x | z], z ~ p(z)")
        return
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
    if ax.get_lines():
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


#: latent.png shows at most this many test points
LATENT_POINTS = 2000


def latent_plane(means: torch.Tensor):
    """``(points (N, 2), share)``: posterior means ``(N, d)`` as they are for d = 2 (share None),
    else their projection on the first two principal components (the centred means times the top two
    right singular vectors), with each component's share of the variance."""
    if means.dim() != 2 or means.shape[1] < 2:
        raise ValueError("latent.png needs a latent of 2 or more dimensions")
    if means.shape[1] == 2:
        return means.numpy(), None
    centred = means.double() - means.double().mean(0)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    share = (s**2 / max(float((s**2).sum()), 1e-300)).tolist()
    return (centred @ v[:2].T).float().numpy(), share[:2]


@torch.no_grad()
def plot_latent(path, vae, x) -> None:
    """The test points' posterior means E_q[z | x] in 2-D: the latent itself for 2 dimensions, else
    its first two principal components (explained variance on the axes), coloured by label where
    x has labels. x: a :class:`~pyrovae.Batch` (or tensor)."""
    from pyrovae.infer.evaluate import posterior_means

    batch = as_batch(x)
    means = posterior_means(vae, batch).float().cpu()
    points, share = latent_plane(means)
    axes = ("z_1", "z_2") if share is None else (f"PC 1 ({100 * share[0]:.0f}% of the variance)",
                                                 f"PC 2 ({100 * share[1]:.0f}%)")
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    size = max(4.0, min(30.0, 6000 / len(points)))  # few points drawn larger
    y = batch.y
    if y is not None:
        labels = y.cpu().numpy()
        scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10" if labels.max() < 10 else "viridis",
                             s=size, alpha=0.8)
        if labels.max() < 10:
            ax.legend(*scatter.legend_elements(), title="label", fontsize=7, title_fontsize=7, loc="best",
                      markerscale=0.8)
        else:
            fig.colorbar(scatter, ax=ax, label="label")
    else:
        ax.scatter(points[:, 0], points[:, 1], s=size, alpha=0.6)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(f"posterior means of {len(points)} test points ({means.shape[1]}-D latent"
                 f"{', PCA' if means.shape[1] > 2 else ''})", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


class FigureWarning(UserWarning):
    """A figure of a finished run could not be drawn (the run itself is complete)."""


def _same(x):
    return x


class _Undone:
    """A model whose ``sample`` gives values in the data's units (``undo`` applied); the rest as it is."""

    def __init__(self, vae, undo: Callable):
        self.vae, self.undo = vae, undo

    def __getattr__(self, name):
        return getattr(self.vae, name)

    def sample(self, *args, **kwargs):
        return self.undo(self.vae.sample(*args, **kwargs))


def plot_run(run_dir, vae, test_x: torch.Tensor, metrics: List[Dict], latent_x=None,
             notes: Optional[List[str]] = None, undo: Optional[Callable] = None) -> List[str]:
    """Write every figure of a run folder; returns the file names written. A figure that cannot
    be drawn (a family's sample or reconstruction failing, a full disk) is a :class:`FigureWarning`
    that names it and why, and the others are still drawn: a finished run never fails on a figure.
    A figure that does not apply (the manifold of data that are not images, the latent space of a
    1-D latent) is left out with a note, appended to ``notes`` (else printed on stderr). ``latent_x``:
    the test points of ``latent.png`` (default ``test_x``). ``undo``: what maps the model's values
    back to the data's units (a standardization's ``undo``), for the reconstructions and samples."""
    run_dir = Path(run_dir)
    figures = [(RECONSTRUCTIONS_PNG, lambda path: plot_reconstructions(path, vae, test_x, undo=undo)),
               (SAMPLES_PNG, lambda path: plot_samples(path, vae, undo=undo, given=test_x)),
               (ELBO_PNG, lambda path: plot_elbo(path, metrics))]
    latent_dim = getattr(vae, "latent_dim", None)
    left_out = []
    if latent_dim == 2 and hasattr(vae, "decode") and not getattr(vae, "num_classes", None):
        if is_image(vae.event_shape):
            figures.append((MANIFOLD_PNG, lambda path: plot_manifold(path, vae)))
        else:
            left_out.append(f"{MANIFOLD_PNG} left out: the data (shape {tuple(vae.event_shape)}) are not images")
    if isinstance(latent_dim, int) and latent_dim >= 2:
        figures.append((LATENT_PNG, lambda path: plot_latent(path, vae, test_x if latent_x is None else latent_x)))
    elif latent_dim == 1:
        left_out.append(f"{LATENT_PNG} left out: a 1-D latent has no plane to draw (see {ELBO_PNG}, {EVALUATION})")
    if notes is not None:
        notes.extend(left_out)
    else:
        for note in left_out:
            print(f"pyrovae: {note}", file=sys.stderr)
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
