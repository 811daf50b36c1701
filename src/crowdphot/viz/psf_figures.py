"""Figure of an empirical PSF grid: the model, the correction added to it, and residual stamps.

Used by ``crowdphot psf --plot`` and the benchmark's RESULTS figures.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_psf_model"]


def _star_residuals(model, data, x, y, flux, size):
    """``(n, size, size)`` stamps of ``data - flux * model`` around each star, and the data."""
    from crowdphot.core.batched import stamp_origin

    xlo, ylo = stamp_origin(x, y, (size, size))
    xlo = np.clip(xlo, 0, data.shape[1] - size)
    ylo = np.clip(ylo, 0, data.shape[0] - size)
    rows = ylo[:, None, None] + np.arange(size)[None, :, None]
    cols = xlo[:, None, None] + np.arange(size)[None, None, :]
    stamps = data[rows, cols]
    mod = flux[:, None, None] * model._stamps(x, y, xlo, ylo, (size, size))
    return stamps - mod, stamps


def plot_psf_model(model, *, base=None, data=None, catalog=None, n_stamps=6, size=15,
                   figsize=None):
    """Plot a PSF grid: each node's ePSF, the correction from ``base`` and residual stamps
    (of the brightest stars, fitted with ``base`` and with ``model``).

    Parameters
    ----------
    model : GriddedPSFModel
        The built or refined grid.
    base : GriddedPSFModel, optional
        The model it corrects (``refine_psf``'s input); its difference with ``model`` is shown.
        Default: ``model.meta['correction']`` when present.
    data : ndarray of shape (ny, nx), optional
        Image whose stars give residual stamps (with ``catalog``).
    catalog : astropy.table.Table, optional
        ``x``, ``y``, ``flux`` of stars to show (the brightest ``n_stamps``), fitted with
        ``model`` (and with ``base`` when given) for the residual stamps.
    n_stamps : int, optional
    size : int, optional
        Residual stamp size (pixels).
    figsize : (w, h), optional

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_psf_model(model)  # doctest: +SKIP
    """
    from crowdphot.core.optional import require_matplotlib

    require_matplotlib("plot_psf_model")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    stack = np.asarray(model.data)
    corr = None
    if base is not None:
        corr = stack - np.asarray(base.data)
    elif "correction" in model.meta:
        corr = np.asarray(model.meta["correction"])
    n = len(stack)
    stamps_rows = 0 if data is None or catalog is None else (2 if base is not None else 1)
    rows = 1 + (corr is not None) + stamps_rows
    fig, axes = plt.subplots(rows, max(n, n_stamps if rows > 1 else n),
                             figsize=figsize or (2.2 * max(n, n_stamps), 2.3 * rows),
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_visible(False)
    peak = stack.max()
    for k in range(n):
        ax = axes[0, k]
        ax.set_visible(True)
        ax.imshow(np.clip(stack[k], peak * 1e-5, None), origin="lower", cmap="viridis",
                  norm=LogNorm(vmin=peak * 1e-5, vmax=peak))
        x, y = model.grid_xypos[k]
        nst = model.meta.get("n_stars")
        label = f"({x:.0f}, {y:.0f})"
        if nst is not None and k < len(nst):
            label += f"\n{nst[k]} stars"
        ax.set_title(label, fontsize=8)
    axes[0, 0].set_ylabel("ePSF (log)")
    row = 1
    if corr is not None:
        lim = np.abs(corr).max() or 1.0
        for k in range(n):
            ax = axes[row, k]
            ax.set_visible(True)
            ax.imshow(corr[k], origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(f"max |corr| {np.abs(corr[k]).max() / peak:.1%} of peak", fontsize=7)
        axes[row, 0].set_ylabel("correction")
        row += 1
    if stamps_rows:
        flux = np.asarray(catalog["flux"], dtype=float)
        order = np.argsort(-flux)[:n_stamps]
        x = np.asarray(catalog["x"], dtype=float)[order]
        y = np.asarray(catalog["y"], dtype=float)[order]
        from crowdphot.core.fit import fit_psf

        shown = [("star - model", base)] if base is not None else []
        shown.append(("star - refined" if base is not None else "star - model", model))
        lim = None
        for label, psf in shown:
            res = fit_psf(data, psf, x, y, flux[order], fit_shape=5)
            resid, stamps = _star_residuals(psf, data, res.x, res.y, res.flux, size)
            if lim is None:  # one colour scale for both rows: +-5 % of each star's peak
                lim = 0.05 * stamps.max(axis=(1, 2))
            for j in range(len(order)):
                ax = axes[row, j]
                ax.set_visible(True)
                ax.imshow(resid[j], origin="lower", cmap="RdBu_r", vmin=-lim[j], vmax=lim[j])
                ax.set_title(f"+-5% of peak, flux {res.flux[j]:.3g}", fontsize=7)
            axes[row, 0].set_ylabel(label)
            row += 1
    fig.tight_layout()
    return fig
