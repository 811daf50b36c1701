"""Figures a person would rather look at than read: the notebook's plots, ready-made.

Every function takes arrays/tables, draws with matplotlib's object API (no global state beyond
the returned Figure) and returns the ``Figure``; callers save or show it.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "plot_image",
    "plot_detections",
    "plot_groups",
    "plot_data_model_residual",
    "plot_fit_vs_truth",
    "plot_flux_difference",
]


def _figure(figsize):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _norm(data, percent):
    from astropy.visualization import simple_norm

    finite = np.asarray(data)[np.isfinite(data)]
    return simple_norm(finite if finite.size else np.zeros(1), "sqrt", percent=percent)


def plot_image(data, *, ax=None, percent=99.0, title=None, cmap="viridis", figsize=(8, 8)):
    """Show an image with a sqrt stretch clipped at ``percent``; returns the Figure.

    Examples
    --------
    >>> fig = plot_image(np.random.default_rng(0).normal(size=(32, 32)))
    >>> len(fig.axes) >= 1
    True
    """
    fig = ax.figure if ax is not None else _figure(figsize)
    ax = ax if ax is not None else fig.add_subplot()
    im = ax.imshow(data, origin="lower", interpolation="nearest", cmap=cmap,
                   norm=_norm(data, percent))
    fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        ax.set_title(title)
    ax.set_xlabel("x [pixel]")
    ax.set_ylabel("y [pixel]")
    return fig


def plot_detections(data, x, y, *, radius=20, color="red", percent=99.0, title=None,
                    figsize=(8, 8)):
    """The image with a circle around each detection (the notebook's first figure)."""
    from matplotlib.collections import EllipseCollection

    fig = plot_image(data, percent=percent, title=title or f"{len(x)} detections",
                     figsize=figsize)
    ax = fig.axes[0]
    offsets = np.column_stack([x, y])
    ax.add_collection(EllipseCollection(
        2 * radius, 2 * radius, 0, units="xy", offsets=offsets, offset_transform=ax.transData,
        facecolors="none", edgecolors=color, linewidths=1.0))
    return fig


def plot_groups(data, x, y, group_ids, *, radius=20, seed=123, percent=99.0, zoom=None,
                figsize=(8, 8)):
    """Sources circled in one random colour per group (the notebook's grouping figure).

    Parameters
    ----------
    zoom : (xmin, xmax, ymin, ymax), optional
        Limits for a close-up of one region.
    """
    from matplotlib.collections import EllipseCollection

    from .utils import make_random_cmap

    group_ids = np.asarray(group_ids)
    fig = _figure(figsize)
    ax = fig.add_subplot()
    ax.imshow(data, origin="lower", interpolation="nearest", cmap="Greys_r",
              norm=_norm(data, percent))
    cmap = make_random_cmap(int(group_ids.max()) + 1, seed=seed)
    colors = np.asarray(cmap.colors)[group_ids % len(cmap.colors)]
    ax.add_collection(EllipseCollection(
        2 * radius, 2 * radius, 0, units="xy", offsets=np.column_stack([x, y]),
        offset_transform=ax.transData, facecolors="none", edgecolors=colors, linewidths=2))
    n_groups = len(np.unique(group_ids))
    ax.set_title(f"{len(group_ids)} sources in {n_groups} groups")
    if zoom is not None:
        ax.set_xlim(zoom[0], zoom[1])
        ax.set_ylim(zoom[2], zoom[3])
    return fig


def plot_data_model_residual(data, model, residual, *, percent=99.0, zoom=None,
                             figsize=(15, 5)):
    """Three panels: data, model and residual on the same stretch."""
    fig = _figure(figsize)
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    norm = _norm(data, percent)
    for ax, img, title in zip(axes, (data, model, residual), ("Data", "Model", "Residual"),
                              strict=True):
        im = ax.imshow(np.asarray(getattr(img, "value", img)), origin="lower",
                       interpolation="nearest", norm=norm)
        ax.set_title(title)
        if zoom is not None:
            ax.set_xlim(zoom[0], zoom[1])
            ax.set_ylim(zoom[2], zoom[3])
    fig.colorbar(im, ax=axes, shrink=0.8)
    return fig


def _col(table, name):
    col = table[name]
    return np.asarray(getattr(col, "value", col), dtype=float)


def plot_fit_vs_truth(matched, *, truth_cols=("x_0", "y_0", "flux"),
                      fit_cols=("x_fit", "y_fit", "flux_fit"), figsize=(13, 4.2)):
    """Fit minus truth against truth for x, y and flux (residuals show what 1:1 plots hide).

    Parameters
    ----------
    matched : Table
        Joined truth/fit table (e.g. from :func:`crowdphot.match_catalogs`).
    """
    fig = _figure(figsize)
    axes = fig.subplots(1, 3)
    fig.suptitle("PSF photometry: fit vs truth")
    for ax, tc, fc, label in zip(axes, truth_cols, fit_cols, ("x", "y", "flux"), strict=True):
        t, f = _col(matched, tc), _col(matched, fc)
        if label == "flux":
            d = (f - t) / t * 100.0
            ax.set_xscale("log")
            ax.set_ylabel("fit - true flux [%]")
        else:
            d = f - t
            ax.set_ylabel(f"fit - true {label} [pixel]")
        ax.plot(t, d, ".", ms=3, alpha=0.7)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel(f"true {label}")
        if d.size:
            ax.set_title(f"median {np.median(d):+.4f}, rms {np.std(d):.4f}", fontsize=9)
    return fig


def plot_flux_difference(matched, *, truth_col="flux", fit_col="flux_fit", bins=50,
                         figsize=(6, 4.5)):
    """Histogram of the percent flux difference (true - fit) / true, as in the notebook."""
    fig = _figure(figsize)
    ax = fig.add_subplot()
    t, f = _col(matched, truth_col), _col(matched, fit_col)
    pdiff = (t - f) / t * 100.0
    ax.hist(pdiff[np.isfinite(pdiff)], bins=bins, color="tab:blue", alpha=0.85)
    ax.set_title("PSF flux differences")
    ax.set_xlabel("percent difference (true - fit) / true")
    ax.set_ylabel("number of stars")
    return fig
