"""Gridded PSF model: ePSFs at fiducial detector positions, blended bilinearly by position.

`GriddedPSFModel` keeps photutils 3's names and values: each ePSF is interpolated with the
bicubic spline of ``core.kernels.spline``, and the model at ``(x_0, y_0)`` is the bilinear
blend of the four ePSFs at the corners of the grid cell containing the position (the nearest
cell, with the position clipped to the grid, outside it).
"""

from __future__ import annotations

import numpy as np
from astropy.modeling import Fittable2DModel, Parameter
from astropy.nddata import NDData

from crowdphot.models.grid_io import parse_psf_grid, parse_stdpsf, parse_stpsf
from crowdphot.models.image import SplinePSFBase, _check_fill_value, _SplineCache

__all__ = ["GriddedPSFModel", "bilinear_grid_weights", "read_psf_grid", "read_stdpsf", "read_stpsf",
           "stdpsf_reader", "webbpsf_reader"]


def bilinear_grid_weights(xgrid, ygrid, x0, y0):
    """Grid-cell corners, bilinear weights and their position derivatives for many stars.

    The cell is the one whose left/bottom node is the last node strictly below the position
    (so a position on an interior node uses the cell to its left/below), clipped to the grid;
    the position is clipped to the cell, so weights are constant outside the grid.

    Parameters
    ----------
    xgrid, ygrid : ndarray of shape (nxg,), (nyg,)
        Sorted unique node coordinates (at least 2 each).
    x0, y0 : ndarray of shape (n,)
        Star positions.

    Returns
    -------
    gidx : ndarray of int64, shape (n, 4)
        Indices of the lower-left, lower-right, upper-left and upper-right ePSFs in a stack
        sorted by y then x.
    w, dwdx, dwdy : ndarray of shape (n, 4)
        Weights (summing to 1) and their derivatives with respect to ``x0`` and ``y0``.

    Examples
    --------
    >>> gidx, w, _, _ = bilinear_grid_weights(np.array([0., 10.]), np.array([0., 10.]),
    ...                                       np.array([2.5]), np.array([5.0]))
    >>> gidx.tolist(), w.tolist()
    ([[0, 1, 2, 3]], [[0.375, 0.125, 0.375, 0.125]])
    """
    nxg = len(xgrid)
    ix = np.clip(np.searchsorted(xgrid, x0) - 1, 0, nxg - 2)
    iy = np.clip(np.searchsorted(ygrid, y0) - 1, 0, len(ygrid) - 2)
    xa, xb = xgrid[ix], xgrid[ix + 1]
    ya, yb = ygrid[iy], ygrid[iy + 1]
    xc = np.clip(x0, xa, xb)
    yc = np.clip(y0, ya, yb)
    norm = (xb - xa) * (yb - ya)
    # same arithmetic as photutils so that the blended values agree to rounding
    w = np.stack([(xb - xc) * (yb - yc), (xc - xa) * (yb - yc),
                  (xb - xc) * (yc - ya), (xc - xa) * (yc - ya)], axis=-1) / norm[:, None]
    inx = ((x0 >= xa) & (x0 <= xb)) / norm
    iny = ((y0 >= ya) & (y0 <= yb)) / norm
    dwdx = np.stack([-(yb - yc), yb - yc, -(yc - ya), yc - ya], axis=-1) * inx[:, None]
    dwdy = np.stack([-(xb - xc), -(xc - xa), xb - xc, xc - xa], axis=-1) * iny[:, None]
    ll = iy * nxg + ix
    gidx = np.stack([ll, ll + 1, ll + nxg, ll + nxg + 1], axis=-1).astype(np.int64)
    return gidx, w, dwdx, dwdy


class GriddedPSFModel(SplinePSFBase, Fittable2DModel):
    """A grid of ePSFs at fiducial detector positions, blended bilinearly by position.

    Parameters
    ----------
    nddata : `~astropy.nddata.NDData`
        ``nddata.data`` is the ePSF stack of shape ``(n_psf, ny, nx)`` (``n_psf`` not 2 or 3;
        at least 4 samples per axis; all finite). ``nddata.meta`` must hold ``'grid_xypos'``
        (the ``(x, y)`` detector position of each ePSF, forming a rectangular grid) and
        ``'oversampling'`` (int or ``(oy, ox)``); other keys are kept in ``meta``.
    flux : float, optional
        Total flux of the source.
    x_0, y_0 : float, optional
        Position of the PSF centre in output pixels.
    fill_value : float or None, optional
        Value outside the sampled ePSF region; ``None`` extends the edge values.
    **kwargs
        Passed to `astropy.modeling.Model` (``fixed``, ``bounds``, ``name``, ...).

    Notes
    -----
    The ePSFs are stored sorted by y then x (``grid_xypos`` follows that order), the grid
    shape is added to ``meta['grid_shape']`` as ``(n_ygrid, n_xgrid)``, and the peak of each
    ePSF is taken to be at its array centre (``origin``). Values equal photutils 3's
    ``GriddedPSFModel`` to rounding error.

    Examples
    --------
    >>> from itertools import product
    >>> from astropy.nddata import NDData
    >>> from crowdphot import GriddedPSFModel
    >>> yy, xx = np.mgrid[:21, :21]
    >>> psfs = [np.exp(-((xx - 10) ** 2 + (yy - 10) ** 2) / (2 * (4 + i) ** 2))
    ...         for i in range(4)]
    >>> psfs = [p / p.sum() * 4 for p in psfs]
    >>> meta = {'grid_xypos': list(product([0, 100], [0, 100])), 'oversampling': 2}
    >>> model = GriddedPSFModel(NDData(np.array(psfs), meta=meta), x_0=50.0, y_0=50.0)
    >>> model.oversampling, model.meta['grid_shape']
    (array([2, 2]), (2, 2))
    >>> model.psf_stamps([50.0, 10.0], [50.0, 90.0], 7).shape
    (2, 7, 7)
    """

    flux = Parameter(default=1.0, description="Total flux of the source.")
    x_0 = Parameter(default=0.0, description="x position of the PSF centre.")
    y_0 = Parameter(default=0.0, description="y position of the PSF centre.")

    def __init__(self, nddata, *, flux=flux.default, x_0=x_0.default, y_0=y_0.default,
                 fill_value=0.0, **kwargs):
        data, xypos = _sorted_grid(nddata)
        self._data = data
        self._grid_xypos = xypos
        self._meta = dict(nddata.meta)  # astropy's Model.meta descriptor reads _meta
        self.oversampling = nddata.meta["oversampling"]
        self.fill_value = _check_fill_value(fill_value)
        self._xgrid = np.unique(xypos[:, 0])
        self._ygrid = np.unique(xypos[:, 1])
        self._meta["grid_shape"] = (len(self._ygrid), len(self._xgrid))
        self._cache = _SplineCache(data)
        super().__init__(flux, x_0, y_0, **kwargs)

    @classmethod
    def read(cls, filename, format=None, **kwargs):  # noqa: A002 - photutils' argument name
        """Read a gridded PSF model from an STPSF/WebbPSF or STDPSF FITS file.

        Parameters
        ----------
        filename : str or os.PathLike
            The FITS file.
        format : {'stpsf', 'webbpsf', 'stdpsf'} or None, optional
            File flavour; ``None`` detects it from the header keywords.
        **kwargs
            Passed to the reader (``detector_id`` for multi-detector STDPSF files).

        Returns
        -------
        model : GriddedPSFModel

        Examples
        --------
        >>> model = GriddedPSFModel.read('nircam_nrca1_f200w_fovp101_samp4_npsf16.fits')
        ... # doctest: +SKIP
        """
        return cls(parse_psf_grid(filename, format=format, **kwargs))

    # -- attributes --------------------------------------------------------------------------
    @property
    def data(self):
        """The ePSF stack, shape ``(n_psf, ny, nx)``, sorted by y then x position."""
        return self._data

    @property
    def grid_xypos(self):
        """``(n_psf, 2)`` array of the ``(x, y)`` position of each ePSF in `data`."""
        return self._grid_xypos

    @property
    def origin(self):
        """``(x, y)`` array centre of the ePSFs in samples (placed at ``x_0, y_0``)."""
        return (np.array(self._data.shape[:0:-1], dtype=float) - 1.0) / 2.0

    def _blend(self, x0, y0, grad):
        x0 = np.atleast_1d(np.asarray(x0, dtype=float))
        y0 = np.atleast_1d(np.asarray(y0, dtype=float))
        if len(self._data) == 1:
            zeros = np.zeros((len(x0), 1))
            return np.zeros((len(x0), 1), np.int64), np.ones((len(x0), 1)), zeros, zeros
        return bilinear_grid_weights(self._xgrid, self._ygrid, x0, y0)

    # -- astropy model hooks ------------------------------------------------------------------
    @property
    def bounding_box(self):
        """``((ymin, ymax), (xmin, xmax))`` covered by the ePSFs around ``(x_0, y_0)``."""
        dy, dx = np.array(self._data.shape[1:]) / 2 / self._oversampling
        return ((self.y_0 - dy, self.y_0 + dy), (self.x_0 - dx, self.x_0 + dx))

    def evaluate(self, x, y, flux, x_0, y_0):
        """Model values at ``x, y`` for a single position ``(x_0, y_0)``.

        Parameters
        ----------
        x, y : array_like
            Evaluation points (at most 2 dimensions, as in photutils).
        flux, x_0, y_0 : float or size-1 array

        Returns
        -------
        values : ndarray, broadcast shape of ``x`` and ``y``
        """
        if np.ndim(x) > 2:
            raise ValueError("x and y must be 1D or 2D")
        x_0 = float(np.ravel(x_0)[0])
        y_0 = float(np.ravel(y_0)[0])
        return self._evaluate_at(x, y, flux, x_0, y_0)

    def plot_grid(self, *, ax=None, vmax_scale=None, peak_norm=False, deltas=False,
                  cmap="viridis", dividers=True, divider_color="darkgray", divider_ls="-",
                  figsize=None):
        """Plot the ePSFs laid out by grid position (see `crowdphot.models.plot.plot_grid`).

        Returns
        -------
        fig : `matplotlib.figure.Figure`
        """
        from crowdphot.models.plot import plot_grid

        return plot_grid(self, ax=ax, vmax_scale=vmax_scale, peak_norm=peak_norm,
                         deltas=deltas, cmap=cmap, dividers=dividers,
                         divider_color=divider_color, divider_ls=divider_ls, figsize=figsize)

    def __str__(self):
        keywords = []
        for key in ("STDPSF", "instrument", "detector", "filter"):
            if key in self.meta:
                keywords.append((key if key == "STDPSF" else key.capitalize(), self.meta[key]))
        keywords += [("Number of PSFs", len(self._grid_xypos)),
                     ("Grid shape", self.meta["grid_shape"]),
                     ("Grid positions", self._grid_xypos.tolist()),
                     ("PSF shape (oversampled pixels)", self._data.shape[1:]),
                     ("Oversampling", self.oversampling.tolist()),
                     ("Fill Value", self.fill_value)]
        return self._format_str(keywords=keywords)

    def __repr__(self):
        return self._format_repr(args=[], kwargs={"oversampling": self.oversampling.tolist(),
                                                  "fill_value": self.fill_value})


def _sorted_grid(nddata):
    """Validate ``nddata`` and return the ePSF stack and positions sorted by y then x."""
    if not isinstance(nddata, NDData):
        raise TypeError(f"data must be an NDData instance: nddata must be an astropy NDData "
                        f"instance, got "
                        f"{type(nddata).__name__}")
    data = np.asarray(nddata.data)
    if data.ndim != 3:
        raise ValueError(f"The NDData data attribute must be a 3D numpy ndarray: nddata.data "
                         f"must be a 3D array (n_psf, ny, nx), got {data.ndim} "
                         f"dimension(s)")
    if data.dtype.kind not in "iuf":
        raise TypeError(f"nddata.data must be numeric, got dtype {data.dtype}")
    if not np.all(np.isfinite(data)):
        raise ValueError("All elements of input data must be finite: nddata.data must contain "
                         "only finite values (found NaN or inf)")
    if data.shape[0] in (2, 3):
        raise ValueError(f"The number of ePSFs must not be 2 or 3: nddata.data must hold 1 or "
                         f"at least 4 ePSFs, got {data.shape[0]}")
    if min(data.shape[1:]) < 4:
        raise ValueError(f"The length of the PSF x and y axes must both be at least 4: "
                         f"nddata.data ePSFs need at least 4 samples along each axis, got "
                         f"shape {data.shape[1:]}")
    if "oversampling" not in nddata.meta:
        raise ValueError("'oversampling' must be in the nddata meta dictionary: nddata.meta "
                         "must contain 'oversampling'")
    if "grid_xypos" not in nddata.meta:
        raise ValueError("'grid_xypos' must be in the nddata meta dictionary: nddata.meta "
                         "must contain 'grid_xypos'")
    xypos = np.array(nddata.meta["grid_xypos"])
    if xypos.ndim != 2 or xypos.shape[1] != 2 or xypos.dtype.kind not in "iuf":
        raise ValueError(f"nddata.meta['grid_xypos'] must be a list of (x, y) pairs, got "
                         f"shape {xypos.shape}")
    if len(xypos) != len(data):
        raise ValueError(f"length of grid_xypos must match the number of input ePSFs: "
                         f"nddata.meta['grid_xypos'] has {len(xypos)} positions for "
                         f"{len(data)} ePSFs")
    if not np.all(np.isfinite(xypos)):
        raise ValueError("nddata.meta['grid_xypos'] must be finite")
    if len(xypos) > 1:
        xs = np.unique(xypos[:, 0])
        ys = np.unique(xypos[:, 1])
        full = {(x, y) for x in xs for y in ys}
        if (len(xs) < 2 or len(ys) < 2 or len(full) != len(xypos)
                or set(map(tuple, xypos.tolist())) != full):
            raise ValueError("grid_xypos must form a rectangular grid: "
                             "nddata.meta['grid_xypos'] must form a rectangular grid")
    order = np.lexsort((xypos[:, 0], xypos[:, 1]))
    return data[order], xypos[order]


def read_psf_grid(filename, format=None, *, model_class=GriddedPSFModel, **kwargs):  # noqa: A002
    """Read an STPSF/WebbPSF or STDPSF gridded-PSF FITS file as a `GriddedPSFModel`.

    Parameters
    ----------
    filename : str or os.PathLike
    format : {'stpsf', 'webbpsf', 'stdpsf'} or None, optional
        ``None`` identifies the format from the header.
    model_class : type, optional
        Class to build (a `GriddedPSFModel` subclass).
    **kwargs
        ``detector_id`` for multi-detector STDPSF files.

    Examples
    --------
    >>> model = read_psf_grid('STDPSF_WFC3IR_F160W.fits')  # doctest: +SKIP
    """
    return model_class(parse_psf_grid(filename, format=format, **kwargs))


def read_stpsf(filename, *, model_class=GriddedPSFModel):
    """Read an STPSF (formerly WebbPSF) gridded PSF FITS file (see `parse_stpsf`).

    Examples
    --------
    >>> model = read_stpsf('nircam_nrca1_f200w_fovp101_samp4_npsf16.fits')  # doctest: +SKIP
    """
    return model_class(parse_stpsf(filename))


def read_stdpsf(filename, *, detector_id=None, model_class=GriddedPSFModel):
    """Read an STScI standard-format ePSF grid ("STDPSF") file (see `parse_stdpsf`).

    Examples
    --------
    >>> model = read_stdpsf('STDPSF_WFC3IR_F160W.fits')  # doctest: +SKIP
    """
    return model_class(parse_stdpsf(filename, detector_id=detector_id))


def stdpsf_reader(filename, detector_id=None):
    """photutils' name for `read_stdpsf` (``GriddedPSFModel.read(..., format='stdpsf')``).

    Examples
    --------
    >>> model = stdpsf_reader('STDPSF_WFC3IR_F160W.fits')  # doctest: +SKIP
    """
    return read_stdpsf(filename, detector_id=detector_id)


def webbpsf_reader(filename):
    """photutils' name for `read_stpsf` (``GriddedPSFModel.read(..., format='webbpsf')``).

    Examples
    --------
    >>> model = webbpsf_reader('nircam_nrca1_f200w_fovp101_samp4_npsf16.fits')  # doctest: +SKIP
    """
    return read_stpsf(filename)
