"""Figures a person would rather look at than read: the notebook's plots, ready-made.

Every function takes arrays/tables, draws with matplotlib's object API (no pyplot, no global
state; works with the Agg backend on a headless machine) and returns the ``Figure``; callers
save or show it. Images are drawn with ``origin='lower'`` so that pixel ``(x, y)`` of the array
``[y, x]`` appears at plot coordinates ``(x, y)``, matching the catalog columns.
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
    "robust_std",
]


def _figure(figsize):
    from crowdphot.core.optional import require_matplotlib

    require_matplotlib("crowdphot.viz figures")
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _values(data):
    return np.asarray(getattr(data, "value", data), dtype=float)


#: Images larger than this (pixels per side) are block-averaged for display: a figure shows
#: at most ~1000 screen pixels per side, and resampling 2048^2 arrays dominates drawing time.
DISPLAY_MAX_SIDE = 1100


def _norm(data, percent, stretch="sqrt"):
    from astropy.visualization import simple_norm

    arr = _values(data)
    if arr.size > 1_000_000:  # percentiles of a strided subsample are as good and much faster
        arr = arr.ravel()[:: arr.size // 1_000_000]
    finite = arr[np.isfinite(arr)]
    if finite.size == 0 or np.ptp(finite) == 0:
        # a blank image would give vmin == vmax; any non-degenerate range draws it flat
        level = float(finite[0]) if finite.size else 0.0
        finite = np.array([level, level + 1.0])
    return simple_norm(finite, stretch, percent=percent)


def _block_mean(arr, factor):
    """Mean over ``factor x factor`` blocks, ignoring NaN; the edge is padded with NaN."""
    ny, nx = arr.shape
    py, px = -ny % factor, -nx % factor
    padded = np.pad(arr, ((0, py), (0, px)), constant_values=np.nan)
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor,
                            factor)
    finite = np.isfinite(blocks)
    total = np.where(finite, blocks, 0.0).sum(axis=(1, 3))
    count = finite.sum(axis=(1, 3))
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _show(ax, data, *, full_resolution=False, **kwargs):
    """``imshow`` in pixel coordinates, block-averaging very large images for speed."""
    arr = _values(data)
    ny, nx = arr.shape
    factor = int(np.ceil(max(ny, nx) / DISPLAY_MAX_SIDE))
    if full_resolution or factor <= 1:
        return ax.imshow(arr, origin="lower", interpolation="nearest", **kwargs)
    small = _block_mean(arr, factor)
    # the blocks cover pixels -0.5 .. n_padded - 0.5; the limits hide the NaN padding
    im = ax.imshow(small, origin="lower", interpolation="nearest",
                   extent=(-0.5, small.shape[1] * factor - 0.5, -0.5,
                           small.shape[0] * factor - 0.5), **kwargs)
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    return im


def robust_std(values):
    """1.4826 x the median absolute deviation of the finite values (NaN when none).

    Examples
    --------
    >>> round(robust_std(np.random.default_rng(0).normal(0, 3, 100_000)), 1)
    3.0
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def _label_axes(ax):
    ax.set_xlabel("x [pixel]")
    ax.set_ylabel("y [pixel]")


def plot_image(data, *, ax=None, percent=99.0, stretch="sqrt", title=None, cmap="viridis",
               colorbar_label="counts", figsize=(8, 7)):
    """Show an image with a ``stretch`` clipped at ``percent``; returns the Figure.

    Parameters
    ----------
    data : array_like (ny, nx)
        The image (a Quantity's unit is stripped).
    ax : matplotlib Axes, optional
        Draw here instead of in a new figure.
    percent : float, optional
        Percentage of pixels inside the colour range (as ``astropy.visualization.simple_norm``).
    stretch : str, optional
        'linear', 'sqrt', 'log', 'asinh', ...
    title, cmap, colorbar_label, figsize
        Cosmetics.

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_image(np.random.default_rng(0).normal(size=(32, 32)))
    >>> len(fig.axes)  # the image and its colour bar
    2
    """
    fig = ax.figure if ax is not None else _figure(figsize)
    ax = ax if ax is not None else fig.add_subplot()
    im = _show(ax, data, cmap=cmap, norm=_norm(data, percent, stretch))
    fig.colorbar(im, ax=ax, shrink=0.85, label=colorbar_label)
    if title:
        ax.set_title(title)
    _label_axes(ax)
    return fig


def _circles(ax, x, y, radius, colors, linewidth):
    from matplotlib.collections import EllipseCollection

    n = len(x)
    coll = EllipseCollection(
        np.full(n, 2.0 * radius), np.full(n, 2.0 * radius), np.zeros(n), units="xy",
        offsets=np.column_stack([x, y]) if n else np.zeros((0, 2)),
        offset_transform=ax.transData, facecolors="none", edgecolors=colors,
        linewidths=linewidth)
    ax.add_collection(coll)
    return coll


def plot_detections(data, x, y, *, radius=20, color="red", percent=99.0, title=None,
                    figsize=(8, 7), unit="counts"):
    """The image with a circle of ``radius`` pixels around each detection.

    Parameters
    ----------
    data : array_like (ny, nx)
    x, y : array_like (n,)
        Detected (or fitted) positions in pixels.
    unit : str, optional
        The data unit for the colour bar label (e.g. the image's BUNIT).

    Returns
    -------
    fig : matplotlib.figure.Figure
        ``fig.axes[0].collections[0]`` holds the ``n`` circles.

    Examples
    --------
    >>> fig = plot_detections(np.zeros((20, 20)), [5.0], [8.0], radius=3)
    >>> len(fig.axes[0].collections[0].get_offsets())
    1
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    fig = plot_image(data, percent=percent, figsize=figsize, colorbar_label=unit,
                     title=title or f"{len(x)} detected sources (circles: r = {radius:g} px)")
    _circles(fig.axes[0], x, y, radius, color, 1.0)
    return fig


def plot_groups(data, x, y, group_ids, *, radius=20, seed=123, percent=99.0, zoom=None,
                title=None, figsize=(8, 8)):
    """Sources circled in one random colour per group, on a grey image.

    Parameters
    ----------
    data : array_like (ny, nx)
    x, y : array_like (n,)
        Source positions in pixels.
    group_ids : array_like of int (n,)
        Group of each source (as ``SourceGrouper`` returns, >= 1).
    seed : int, optional
        Seed of the random colour map (``make_random_cmap``), for reproducible colours.
    zoom : (xmin, xmax, ymin, ymax), optional
        Limits for a close-up of one region.

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_groups(np.zeros((20, 20)), [5.0, 7.0], [8.0, 9.0], [1, 1], radius=2)
    >>> fig.axes[0].get_title()
    '2 sources in 1 groups'
    """
    from crowdphot.utils.colormaps import make_random_cmap

    group_ids = np.asarray(group_ids, dtype=np.int64)
    fig = _figure(figsize)
    ax = fig.add_subplot()
    _show(ax, data, full_resolution=zoom is not None, cmap="Greys_r",
          norm=_norm(data, percent))
    if group_ids.size:
        cmap = make_random_cmap(int(group_ids.max()) + 1, seed=seed)
        colors = np.asarray(cmap.colors)[group_ids % len(cmap.colors)]
    else:
        colors = "none"
    _circles(ax, np.asarray(x, dtype=float), np.asarray(y, dtype=float), radius, colors, 2.0)
    n_groups = len(np.unique(group_ids))
    ax.set_title(title or f"{len(group_ids)} sources in {n_groups} groups")
    _label_axes(ax)
    if zoom is not None:
        ax.set_xlim(zoom[0], zoom[1])
        ax.set_ylim(zoom[2], zoom[3])
    return fig


def plot_data_model_residual(data, model, residual, *, percent=99.0, zoom=None,
                             residual_sigma=5.0, figsize=(16, 5.2), unit="counts"):
    """Three panels: data and model on one sqrt stretch, the residual on its own scale.

    The residual is shown with a diverging colour map over ``+-residual_sigma`` robust
    standard deviations so that over- and under-subtracted stars stand out from the noise.

    Parameters
    ----------
    data, model, residual : array_like (ny, nx)
    zoom : (xmin, xmax, ymin, ymax), optional
        Close-up limits applied to all three panels.
    unit : str, optional
        The data unit for the colour bar labels (e.g. the image's BUNIT).

    Returns
    -------
    fig : matplotlib.figure.Figure
        The first three axes are titled 'Data', 'Model', 'Residual'.

    Examples
    --------
    >>> img = np.random.default_rng(0).normal(size=(16, 16))
    >>> fig = plot_data_model_residual(img, img, img * 0)
    >>> [a.get_title() for a in fig.axes[:3]]
    ['Data', 'Model', 'Residual']
    """
    from crowdphot.core.optional import require_matplotlib

    require_matplotlib("plot_data_model_residual")
    from matplotlib.colors import Normalize

    fig = _figure(figsize)
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    norm = _norm(data, percent)
    full = zoom is not None
    _show(axes[0], data, full_resolution=full, norm=norm)
    im = _show(axes[1], model, full_resolution=full, norm=norm)
    fig.colorbar(im, ax=axes[:2], shrink=0.85, label=unit, location="bottom", aspect=40)
    im = _show(axes[2], residual, full_resolution=full, cmap="RdBu_r")
    # the scale follows the noise of the pixels shown (block averages are less noisy)
    sigma = robust_std(np.ma.filled(im.get_array(), np.nan))
    vmax = residual_sigma * sigma if np.isfinite(sigma) and sigma > 0 else 1.0
    im.set_norm(Normalize(-vmax, vmax))
    fig.colorbar(im, ax=axes[2], shrink=0.85, location="bottom", aspect=20,
                 label=f"residual {unit} (±{residual_sigma:g} σ, σ = {sigma:.3g})")
    factor = int(np.ceil(max(np.shape(_values(data))) / DISPLAY_MAX_SIDE))
    if not full and factor > 1:
        fig.suptitle(f"(shown as {factor} x {factor} pixel block averages)", fontsize=9)
    for ax, title in zip(axes, ("Data", "Model", "Residual"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("x [pixel]")
        if zoom is not None:
            ax.set_xlim(zoom[0], zoom[1])
            ax.set_ylim(zoom[2], zoom[3])
    axes[0].set_ylabel("y [pixel]")
    return fig


def _col(table, name):
    col = table[name]
    return np.asarray(getattr(col, "value", col), dtype=float)


def plot_fit_vs_truth(matched, *, truth_cols=("x_0", "y_0", "flux"),
                      fit_cols=("x_fit", "y_fit", "flux_fit"), figsize=(14, 8)):
    """Fit against truth (top row, with the 1:1 line) and fit minus truth (bottom row).

    The top row is the notebook's figure; the bottom row shows what a 1:1 plot hides. Each
    bottom panel is titled with the median and robust scatter of the differences.

    Parameters
    ----------
    matched : Table
        Joined truth/fit table (e.g. from :func:`crowdphot.match_catalogs`).
    truth_cols, fit_cols : (str, str, str)
        Names of the x, y and flux columns on each side.

    Returns
    -------
    fig : matplotlib.figure.Figure
        Axes 0-2: fit vs truth for x, y, flux; axes 3-5: the differences (flux in percent).

    Examples
    --------
    >>> from astropy.table import QTable
    >>> t = QTable({'x_0': [1.0, 2.0], 'y_0': [3.0, 4.0], 'flux': [10.0, 20.0]})
    >>> t['x_fit'], t['y_fit'], t['flux_fit'] = t['x_0'], t['y_0'], t['flux']
    >>> len(plot_fit_vs_truth(t).axes)
    6
    """
    fig = _figure(figsize)
    axes = fig.subplots(2, 3)
    fig.suptitle(f"PSF photometry results: {len(matched)} matched stars")
    for k, (tc, fc, label) in enumerate(zip(truth_cols, fit_cols, ("x", "y", "flux"),
                                            strict=True)):
        t, f = _col(matched, tc), _col(matched, fc)
        top, bottom = axes[0, k], axes[1, k]
        top.plot(t, f, ".", ms=4, alpha=0.7, color="tab:blue")
        if t.size:
            lo, hi = np.nanmin(t), np.nanmax(t)
            top.plot([lo, hi], [lo, hi], "-", color="0.3", lw=0.8, label="1:1")
            top.legend(loc="upper left", fontsize=8)
        unit = "" if label == "flux" else " [pixel]"
        top.set_xlabel(f"true {label}{unit}")
        top.set_ylabel(f"fit {label}{unit}")
        if label == "flux":
            d = (f - t) / t * 100.0
            bottom.set_ylabel("(fit - true) / true [%]")
            for ax in (top, bottom):
                ax.set_xscale("log")
            top.set_yscale("log")
        else:
            d = f - t
            bottom.set_ylabel(f"fit - true {label} [pixel]")
        bottom.plot(t, d, ".", ms=4, alpha=0.7, color="tab:blue")
        bottom.axhline(0, color="0.3", lw=0.8)
        bottom.set_xlabel(f"true {label}{unit}")
        if d.size:
            bottom.set_title(f"median {np.median(d):+.4f}, robust σ {robust_std(d):.4f}",
                             fontsize=10)
    return fig


def plot_flux_difference(matched, *, truth_col="flux", fit_col="flux_fit", bins=50,
                         figsize=(7, 4.8)):
    """Histogram of the percent flux difference ``(true - fit) / true``, as in the notebook.

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> from astropy.table import QTable
    >>> t = QTable({'flux': [10.0, 20.0], 'flux_fit': [10.1, 19.9]})
    >>> plot_flux_difference(t).axes[0].get_xlabel()
    'percent difference (true - fit) / true'
    """
    fig = _figure(figsize)
    ax = fig.add_subplot()
    t, f = _col(matched, truth_col), _col(matched, fit_col)
    pdiff = (t - f) / t * 100.0
    pdiff = pdiff[np.isfinite(pdiff)]
    ax.hist(pdiff, bins=bins, color="tab:blue", alpha=0.85, edgecolor="white", linewidth=0.4)
    if pdiff.size:
        med = float(np.median(pdiff))
        ax.axvline(0.0, color="0.3", lw=0.8)
        ax.axvline(med, color="tab:red", lw=1.2, ls="--", label=f"median {med:+.3f}%")
        ax.legend(title=f"{pdiff.size} stars, robust σ {robust_std(pdiff):.3f}%", fontsize=9)
    ax.set_title("Histogram of PSF flux differences")
    ax.set_xlabel("percent difference (true - fit) / true")
    ax.set_ylabel("number of stars")
    return fig
