"""Drop detections that are not significant once their neighbours are subtracted (ALLSTAR's rule).

A finder fires on the rings and spikes of bright stars (and on noise peaks in their wings); the
independent PSF fits then give those "stars" a flux that is really the neighbour's light. As
DAOPHOT's ALLSTAR does, each star's flux is re-measured in its fit box with the models of all
*other* fitted stars subtracted (a linear least-squares flux at the fitted position); stars
whose re-measured flux is below ``snr`` times its error are dropped. Real stars, however faint,
keep their flux (their light is not in the neighbours' models); artefacts fall to zero.

Used by ``crowdphot phot`` after finding and fitting (never for ``--init`` positions, which the
user asked for); the number dropped goes into the catalog's metadata. The default cut, 5 sigma
in flux, is far below what a real detection has: a star whose peak is at the default 5-sigma
detection threshold has a flux S/N of about 15 (the flux integrates the whole PSF), while the
rings of bright stars plus noise give 0-5 sigma once the neighbours are subtracted.
"""

from __future__ import annotations

import numpy as np

__all__ = ["add_significance_arguments", "apply_min_snr", "drop_insignificant",
           "neighbour_subtracted_flux"]


def add_significance_arguments(parser):
    """Add ``--min-snr`` to a parser."""
    parser.add_argument("--min-snr", type=float, default=5.0, metavar="S",
                        help="drop found stars whose flux, re-measured with every other star's "
                        "model subtracted, is below S sigma (PSF spikes and rings, noise "
                        "peaks; default %(default)s; 0 keeps every star)")


def _gather(image, xlo, ylo, shape):
    """``image`` pixels of each stamp, shape (n, ny, nx); NaN outside the image."""
    ny, nx = shape
    yy = ylo[:, None] + np.arange(ny)
    xx = xlo[:, None] + np.arange(nx)
    inside = (((yy >= 0) & (yy < image.shape[0]))[:, :, None]
              & ((xx >= 0) & (xx < image.shape[1]))[:, None, :])
    vals = image[np.clip(yy, 0, image.shape[0] - 1)[:, :, None],
                 np.clip(xx, 0, image.shape[1] - 1)[:, None, :]]
    return np.where(inside, vals, np.nan)


def neighbour_subtracted_flux(data, psf, x, y, flux, fit_shape, *, error=None, mask=None,
                              sigma=None):
    """Flux and error of each star re-measured with every other star's model subtracted.

    Parameters
    ----------
    data : ndarray of shape (ny, nx)
        The (sky-subtracted) image.
    psf : crowdphot PSF model
        With the batched ``psf_stamps`` interface.
    x, y, flux : ndarray of shape (n,)
        Fitted positions and fluxes (non-finite rows give NaN).
    fit_shape : (int, int)
        Box in which each flux is re-measured.
    error : ndarray of shape (ny, nx), optional
        Pixel uncertainties; default ``sigma`` everywhere.
    mask : ndarray of bool, optional
        Pixels to ignore.
    sigma : float, optional
        Pixel noise when ``error`` is None.

    Returns
    -------
    flux, flux_err : ndarray of shape (n,)

    Examples
    --------
    >>> from crowdphot import CircularGaussianPRF, render_image
    >>> psf = CircularGaussianPRF(fwhm=3.0)
    >>> img = render_image((40, 40), psf, np.array([10.0, 13.0]), np.array([10.0, 10.0]),
    ...                    np.array([1000.0, 5.0]))
    >>> f, e = neighbour_subtracted_flux(img, psf, np.array([10.0, 13.0]),
    ...                                  np.array([10.0, 10.0]), np.array([1000.0, 50.0]),
    ...                                  (5, 5), sigma=1.0)
    >>> round(float(f[1]), 6)  # the faint star's own flux, not the 50 its fit absorbed
    5.0
    """
    from crowdphot.core.batched import stamp_origin
    from crowdphot.core.render import render_image

    x, y, flux = (np.asarray(v, dtype=float) for v in (x, y, flux))
    n = x.size
    out_f = np.full(n, np.nan)
    out_e = np.full(n, np.nan)
    good = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    if not good.any():
        return out_f, out_e
    xg, yg, fg = x[good], y[good], flux[good]
    model = render_image(data.shape, psf, xg, yg, fg)
    shape = tuple(int(v) for v in fit_shape)
    xlo, ylo = stamp_origin(xg, yg, shape)
    unit = np.asarray(psf.psf_stamps(xg, yg, shape, xlo=xlo, ylo=ylo), dtype=float)
    d = _gather(np.asarray(data, dtype=float), xlo, ylo, shape)
    others = _gather(model, xlo, ylo, shape) - fg[:, None, None] * unit
    if error is not None:
        err = _gather(np.asarray(error, dtype=float), xlo, ylo, shape)
    else:
        err = np.full(d.shape, float(sigma) if sigma else 1.0)
    w = 1.0 / err**2
    use = np.isfinite(d) & np.isfinite(w) & (err > 0)
    if mask is not None:
        use &= ~_gather(mask.astype(float), xlo, ylo, shape).astype(bool)
    w = np.where(use, w, 0.0)
    resid = np.where(use, d - others, 0.0)
    norm = np.sum(w * unit * unit, axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        out_f[good] = np.sum(w * resid * unit, axis=(1, 2)) / norm
        out_e[good] = 1.0 / np.sqrt(norm)
    return out_f, out_e


def drop_insignificant(table, data, psf, fit_shape, *, error=None, mask=None, sigma=None,
                       snr=5.0):
    """Rows of ``table`` whose neighbour-subtracted flux is at least ``snr`` sigma.

    Rows with a non-finite fit are kept (their flags say why).

    Returns
    -------
    table : astropy Table
        The kept rows (a new table; ``table`` when nothing is dropped).
    n_dropped : int
    """
    def col(name):
        return np.asarray(getattr(table[name], "value", table[name]), dtype=float)

    x, y, flux = col("x_fit"), col("y_fit"), col("flux_fit")
    f, e = neighbour_subtracted_flux(data, psf, x, y, flux, fit_shape, error=error, mask=mask,
                                     sigma=sigma)
    drop = np.isfinite(f) & np.isfinite(e) & (f < snr * e)
    n = int(np.count_nonzero(drop))
    return (table[~drop] if n else table), n


def apply_min_snr(args, image, psf, table, sky_info):
    """``crowdphot phot``'s clean-up step: ``(table, n_dropped)``; records ``n_insignificant``.

    Skipped for forced photometry (``--init``), tiled runs (no pixels in memory) and
    ``--min-snr 0``.
    """
    snr = getattr(args, "min_snr", 5.0)
    if (not snr or getattr(args, "init", None) or getattr(args, "tile", None)
            or image.data is None or len(table) == 0):
        return table, 0
    sigma = sky_info.get("sky_rms")
    if sigma is None:
        from crowdphot.cli.stats import robust_sigma

        sigma = robust_sigma(image.data, image.mask)
    table, n = drop_insignificant(table, image.data, psf, (args.fit_shape, args.fit_shape),
                                  error=image.error, mask=image.mask, sigma=sigma, snr=snr)
    table.meta["min_snr"] = float(snr)
    table.meta["n_insignificant"] = n
    return table, n
