"""Plot a grid of ePSFs laid out by their detector positions (``GriddedPSFModel.plot_grid``)."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_grid", "grid_mosaic"]


def grid_mosaic(model, *, deltas=False):
    """2D mosaic of a model's ePSFs, row ``i`` of ePSFs at the ``i``-th y node (bottom up).

    Parameters
    ----------
    model : GriddedPSFModel or STDPSFGrid
        Any object with ``data`` ``(n_psf, ny, nx)`` sorted by y then x, and ``_xgrid``,
        ``_ygrid`` node coordinates.
    deltas : bool, optional
        Subtract the mean ePSF (ignoring all-zero ePSFs, which stay zero).

    Returns
    -------
    mosaic : ndarray of shape (n_ygrid * ny, n_xgrid * nx)

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> m = SimpleNamespace(data=np.arange(4.0).reshape(4, 1, 1), _xgrid=np.array([0, 9]),
    ...                     _ygrid=np.array([0, 9]))
    >>> grid_mosaic(m).tolist()
    [[0.0, 1.0], [2.0, 3.0]]
    """
    data = np.array(model.data, dtype=float)
    if deltas:
        # blank ePSFs (e.g. outside MIRI's field of view) must not drag the mean down
        blank = ~np.any(data != 0, axis=(1, 2))
        if np.any(~blank):
            data -= data[~blank].mean(axis=0)
        data[blank] = 0.0
    nyg, nxg = len(model._ygrid), len(model._xgrid)
    ny, nx = data.shape[1:]
    return data.reshape(nyg, nxg, ny, nx).swapaxes(1, 2).reshape(nyg * ny, nxg * nx)


def _first(value):
    # STPSF headers may give (value, comment) pairs
    if isinstance(value, (tuple, list, np.ndarray)):
        return value[0] if len(value) else ""
    return value


def plot_grid(model, *, ax=None, vmax_scale=None, peak_norm=False, deltas=False,
              cmap="viridis", dividers=True, divider_color="darkgray", divider_ls="-",
              figsize=None):
    """Plot the ePSFs of a gridded model side by side at their grid positions.

    Parameters
    ----------
    model : GriddedPSFModel or STDPSFGrid
        The ePSF grid.
    ax : `matplotlib.axes.Axes` or None, optional
        Axes to draw on; ``None`` creates a new figure.
    vmax_scale : float or None, optional
        Upper display limit as a fraction of the mosaic maximum: default 1 for the ePSFs
        (logarithmic stretch down to ``vmax / 1e4``) and 0.03 for ``deltas`` (linear stretch
        from ``-vmax`` to ``vmax``).
    peak_norm : bool, optional
        Divide by the mosaic maximum (values relative to the peak).
    deltas : bool, optional
        Show each ePSF minus the mean ePSF, with a diverging stretch.
    cmap : str or `matplotlib.colors.Colormap`, optional
        Colormap.
    dividers : bool, optional
        Draw lines between neighbouring ePSFs.
    divider_color, divider_ls : str, optional
        Colour and line style of the dividers.
    figsize : (float, float) or None, optional
        Size of a newly created figure, in inches.

    Returns
    -------
    fig : `matplotlib.figure.Figure`

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use('Agg')
    >>> from astropy.nddata import NDData
    >>> from crowdphot import GriddedPSFModel
    >>> yy, xx = np.mgrid[:9, :9]
    >>> psfs = np.array([np.exp(-((xx - 4) ** 2 + (yy - 4) ** 2) / (2 + i)) for i in range(4)])
    >>> meta = {'grid_xypos': [(0, 0), (50, 0), (0, 50), (50, 50)], 'oversampling': 1}
    >>> fig = plot_grid(GriddedPSFModel(NDData(psfs, meta=meta)), deltas=True)
    >>> fig.axes[0].get_title()
    '(ePSFs − <ePSF>)'
    """
    from crowdphot.core.optional import require_matplotlib

    require_matplotlib("plot_grid")
    import matplotlib.pyplot as plt
    from astropy.visualization import simple_norm
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    mosaic = grid_mosaic(model, deltas=deltas)
    meta = getattr(model, "meta", {}) or {}
    detector = str(_first(meta.get("detector", "")))
    nrcsw = detector == "NRCSW"
    if ax is None:
        fig, ax = plt.subplots(figsize=(20, 8) if figsize is None and nrcsw else figsize)
    else:
        fig = ax.get_figure()

    peak = mosaic.max()
    if peak_norm and peak != 0:
        mosaic /= peak
        peak = 1.0
    if deltas:
        vmax = peak * (0.03 if vmax_scale is None else vmax_scale)
        norm = simple_norm(mosaic, "linear", vmin=-vmax, vmax=vmax)
    else:
        vmax = peak * (1.0 if vmax_scale is None else vmax_scale)
        norm = simple_norm(mosaic, "log", vmin=vmax / 1.0e4, vmax=vmax, log_a=1.0e4)

    nyg, nxg = len(model._ygrid), len(model._xgrid)
    # one unit of axis coordinate per ePSF so that ticks sit at the ePSF centres
    image = ax.imshow(mosaic, extent=[-0.5, nxg - 0.5, -0.5, nyg - 0.5], norm=norm, cmap=cmap,
                      origin="lower")
    xlabels = np.asarray(model._xgrid).astype(int)
    ylabels = np.asarray(model._ygrid).astype(int)
    if nrcsw:  # eight 2048-pixel detectors: repeat the per-detector node labels
        xlabels = list(xlabels[:5]) * 4
        ylabels = list(ylabels[:5]) * 2
    ax.set_xticks(np.arange(nxg))
    ax.set_xticklabels(xlabels)
    ax.set_yticks(np.arange(nyg))
    ax.set_yticklabels(ylabels)
    ax.set_xlabel("ePSF location in detector X pixels")
    ax.set_ylabel("ePSF location in detector Y pixels")
    if dividers:
        for i in range(nxg - 1):
            ax.axvline(i + 0.5, color=divider_color, ls=divider_ls)
        for i in range(nyg - 1):
            ax.axhline(i + 0.5, color=divider_color, ls=divider_ls)

    instrument = _first(meta.get("instrument", "")) or _first(meta.get("instrume", ""))
    words = [str(w) for w in (instrument, detector, _first(meta.get("filter", ""))) if w]
    prefix = " ".join(words) + " " if words else ""
    if deltas:
        ax.set_title(f"{prefix}(ePSFs \u2212 <ePSF>)")
        label = ("Difference relative to average ePSF peak" if peak_norm
                 else "Difference relative to average ePSF values")
    else:
        ax.set_title(f"{prefix}ePSFs")
        label = "Scale relative to ePSF peak pixel" if peak_norm else "ePSF flux per pixel"
    cax = make_axes_locatable(ax).append_axes("right", size="3%", pad="3%")
    cbar = fig.colorbar(image, cax=cax, label=label)
    if not deltas:
        cbar.ax.set_yscale("log")

    if nrcsw:
        ax.axhline(nyg / 2 - 0.5, color="orange")
        for i in range(1, 4):
            ax.axvline(nxg / 4 * i - 0.5, color="orange")
        for i, row in enumerate([["A1", "A3", "B4", "B2"], ["A2", "A4", "B3", "B1"]]):
            for j, name in enumerate(row):
                ax.text(j * nxg / 4 - 0.45, (i + 1) * nyg / 2 - 0.55, name, color="orange",
                        verticalalignment="top", fontsize=12)
    fig.tight_layout()
    return fig
