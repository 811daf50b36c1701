"""Figures of artificial star tests: completeness, bias and scatter against magnitude; a map.

Same conventions as :mod:`crowdphot.viz.figures`: matplotlib's object API (no pyplot), the
``Figure`` is returned for the caller to save.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_ast_summary", "plot_completeness_map"]


def _figure(figsize, feature):
    from crowdphot.core.optional import require_matplotlib

    require_matplotlib(feature)
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def plot_ast_summary(summary, *, figsize=(6, 7)):
    """Completeness (with binomial errors), bias and scatter against input magnitude.

    Parameters
    ----------
    summary : QTable
        :func:`crowdphot.pipeline.ast_summary.ast_summary`'s table.
    figsize : (w, h), optional

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> from astropy.table import QTable
    >>> s = QTable({'mag_lo': [-9.0, -8.5], 'mag_hi': [-8.5, -8.0], 'n': [10, 10],
    ...             'completeness': [1.0, 0.5], 'completeness_err': [0.0, 0.16],
    ...             'bias': [0.0, 0.01], 'scatter': [0.01, 0.05]})
    >>> [ax.get_ylabel() for ax in plot_ast_summary(s).axes]
    ['completeness', 'bias (mag out - in)', 'scatter (mag)']
    """
    fig = _figure(figsize, "plot_ast_summary")
    axes = fig.subplots(3, 1, sharex=True)
    mag = 0.5 * (np.asarray(summary["mag_lo"]) + np.asarray(summary["mag_hi"]))
    have = np.asarray(summary["n"]) > 0
    axes[0].errorbar(mag[have], np.asarray(summary["completeness"])[have],
                     yerr=np.asarray(summary["completeness_err"])[have], marker="o", ms=3)
    axes[0].set_ylim(-0.05, 1.05)
    axes[0].set_ylabel("completeness")
    axes[1].plot(mag[have], np.asarray(summary["bias"])[have], marker="o", ms=3)
    axes[1].axhline(0.0, color="0.5", lw=0.8)
    axes[1].set_ylabel("bias (mag out - in)")
    axes[2].plot(mag[have], np.asarray(summary["scatter"])[have], marker="o", ms=3)
    axes[2].set_ylabel("scatter (mag)")
    axes[2].set_xlabel("input magnitude")
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


def plot_completeness_map(table, shape, *, bins=8, figsize=(5.5, 4.5)):
    """Completeness per image cell (all magnitudes), as an image over the detector.

    Parameters
    ----------
    table : QTable
        :func:`crowdphot.pipeline.ast.artificial_star_test`'s table.
    shape : (ny, nx)
        Image shape.
    bins : int or (by, bx), optional
    figsize : (w, h), optional

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> from astropy.table import QTable
    >>> t = QTable({'x_in': [1.0, 3.0], 'y_in': [1.0, 1.0], 'recovered': [True, False]})
    >>> fig = plot_completeness_map(t, (4, 4), bins=2)
    >>> fig.axes[0].get_title()
    'completeness'
    """
    from crowdphot.pipeline.ast_summary import completeness_map

    fig = _figure(figsize, "plot_completeness_map")
    ax = fig.subplots()
    comp, _ = completeness_map(table, shape, bins=bins)
    ny, nx = shape
    im = ax.imshow(comp, origin="lower", extent=(-0.5, nx - 0.5, -0.5, ny - 0.5), vmin=0,
                   vmax=1, cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax)
    ax.set_title("completeness")
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    return fig
