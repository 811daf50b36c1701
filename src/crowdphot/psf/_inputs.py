"""Input preparation for PSF photometry: data/error/mask coercion and the initial-parameter table.

photutils accepts many spellings for the initial-position and flux columns; the accepted names
(facts of its public interface) are listed here once. Everything below is array-in/array-out
except the table normalisation itself.
"""

from __future__ import annotations

import warnings

import astropy.units as u
import numpy as np
from astropy.nddata import NDData, StdDevUncertainty
from astropy.table import QTable, Table

from crowdphot.core.validate import CrowdphotWarning, as_pair, positive_real

__all__ = [
    "VALID_INIT_COLNAMES",
    "model_main_params",
    "find_column",
    "coerce_inputs",
    "build_init_params",
]

#: Accepted column names for the initial x, y and flux (first match wins).
VALID_INIT_COLNAMES = {
    "x": ("x_init", "xinit", "x", "x_0", "x0", "xcentroid", "x_centroid", "x_peak", "xcen",
          "x_cen", "xpos", "x_pos", "x_fit", "xfit"),
    "y": ("y_init", "yinit", "y", "y_0", "y0", "ycentroid", "y_centroid", "y_peak", "ycen",
          "y_cen", "ypos", "y_pos", "y_fit", "yfit"),
    "flux": ("flux_init", "fluxinit", "flux", "flux_0", "flux0", "flux_fit", "fluxfit",
             "source_sum", "segment_flux", "kron_flux"),
}


def model_main_params(psf_model):
    """Names of the model's ``(x, y, flux)`` parameters.

    Models either have ``x_0``, ``y_0`` and ``flux`` parameters or define ``x_name``,
    ``y_name`` and ``flux_name`` attributes naming them.

    Examples
    --------
    >>> from crowdphot import CircularGaussianPRF
    >>> model_main_params(CircularGaussianPRF())
    ('x_0', 'y_0', 'flux')
    """
    from astropy.modeling import Model

    if not isinstance(psf_model, Model):
        raise TypeError("psf_model must be an Astropy Model subclass (an astropy Model "
                        "instance)")
    if psf_model.n_inputs != 2 or psf_model.n_outputs != 1:
        raise ValueError("psf_model must be two-dimensional (2 inputs, 1 output)")
    names = ("x_0", "y_0", "flux")
    if all(n in psf_model.param_names for n in names):
        return names
    alt = tuple(getattr(psf_model, a, None) for a in ("x_name", "y_name", "flux_name"))
    if all(alt) and all(n in psf_model.param_names for n in alt):
        return alt
    raise ValueError(
        "Invalid PSF model - could not find PSF parameter names: psf_model must have flux, x_0 "
        "and y_0 parameters (or x_name/y_name/flux_name attributes naming its position and "
        "flux parameters)"
    )


def find_column(table, alias):
    """First column of ``table`` that is an accepted spelling of ``alias`` (or None).

    Examples
    --------
    >>> find_column(QTable({'xcentroid': [1.0]}), 'x')
    'xcentroid'
    """
    names = VALID_INIT_COLNAMES.get(alias, (f"{alias}_init", alias, f"{alias}_fit"))
    for name in names:
        if name in table.colnames:
            return name
    return None


def coerce_inputs(data, mask, error):
    """Split NDData/Quantity inputs into plain arrays plus a unit.

    Returns
    -------
    data : ndarray (ny, nx) float
    mask : ndarray (ny, nx) bool or None (caller's mask, not yet merged with NaNs)
    error : ndarray or None
    unit : astropy unit or None
    """
    if isinstance(data, NDData):
        unit = data.unit
        if mask is None and data.mask is not None:
            mask = data.mask
        if error is None and data.uncertainty is not None:
            unc = data.uncertainty.represent_as(StdDevUncertainty)
            error = unc.array
            if unit is not None:
                # the uncertainty may carry its own (compatible) unit, e.g. mJy for Jy data
                error = u.Quantity(error, unit if unc.unit is None else unc.unit)
        data = data.data if unit is None else u.Quantity(data.data, unit)
    unit = None
    if isinstance(data, u.Quantity):
        unit = data.unit
        data = data.value
        if isinstance(error, u.Quantity):
            try:
                error = error.to_value(unit)
            except u.UnitConversionError as exc:
                raise ValueError("error must have units compatible with data") from exc
        elif error is not None:
            raise ValueError("data has units, so error must have the same units")
    elif isinstance(error, u.Quantity):
        raise ValueError("error has units, so data must have units too")
    if mask is np.ma.nomask:
        mask = None
    return data, mask, error, unit


def _strip_unit(col, unit, colname):
    """Return a plain float array from a table column, checking units against the data."""
    if isinstance(col, u.Quantity):
        if unit is None:
            raise ValueError(f"init_params {colname} column has units, but the input data does "
                             "not have units")
        try:
            return np.asarray(col.to_value(unit), dtype=float)
        except u.UnitConversionError as exc:
            raise ValueError(
                f"init_params {colname} column has units that are incompatible with the input "
                "data units"
            ) from exc
    if unit is not None and colname not in ("x", "y"):
        raise ValueError(f"The input data has units, but the init_params {colname} column does "
                         "not have units")
    return np.asarray(col, dtype=float)


def _normalise_user_table(init_params, extra_params, unit):
    if not isinstance(init_params, Table):
        raise TypeError("init_params must be an astropy Table or QTable")
    xcol, ycol = find_column(init_params, "x"), find_column(init_params, "y")
    if xcol is None or ycol is None:
        raise ValueError(
            "init_params must contain valid column names for the x and y source positions; "
            "accepted names: "
            f"x: {VALID_INIT_COLNAMES['x']}, y: {VALID_INIT_COLNAMES['y']}"
        )
    out = QTable()
    n = len(init_params)
    out["id"] = (np.asarray(init_params["id"]) if "id" in init_params.colnames
                 else np.arange(1, n + 1))
    # x/y may carry (pixel) units: photutils strips them
    out["x_init"] = np.asarray(getattr(init_params[xcol], "value", init_params[xcol]), float)
    out["y_init"] = np.asarray(getattr(init_params[ycol], "value", init_params[ycol]), float)
    fcol = find_column(init_params, "flux")
    if fcol is not None:
        out["flux_init"] = _strip_unit(init_params[fcol], unit, "flux")
    if "local_bkg" in init_params.colnames:
        out["local_bkg"] = _strip_unit(init_params["local_bkg"], unit, "local_bkg")
    if "group_id" in init_params.colnames:
        out["group_id"] = np.asarray(init_params["group_id"])
    for name in extra_params:
        col = find_column(init_params, name)
        if col is not None:
            out[f"{name}_init"] = np.asarray(init_params[col], dtype=float)
    return out


def _table_from_finder(sources):
    xcol, ycol = find_column(sources, "x"), find_column(sources, "y")
    if xcol is None or ycol is None:
        raise ValueError(
            "The table returned by the 'finder' must contain columns for x and y coordinates. "
            f"Valid column names are: x: {VALID_INIT_COLNAMES['x']}, "
            f"y: {VALID_INIT_COLNAMES['y']}"
        )
    out = QTable()
    out["id"] = np.arange(1, len(sources) + 1)
    with warnings.catch_warnings():
        # older finders' column names may be deprecated aliases; the values are what we want
        warnings.simplefilter("ignore", DeprecationWarning)
        out["x_init"] = np.asarray(getattr(sources[xcol], "value", sources[xcol]), dtype=float)
        out["y_init"] = np.asarray(getattr(sources[ycol], "value", sources[ycol]), dtype=float)
    return out


def _check_group_ids(group_id):
    gid = np.asarray(group_id)
    if gid.dtype.kind == "f" and not np.all(np.isfinite(gid)):
        raise ValueError("group_id must be finite")
    if gid.dtype.kind not in "iu":
        raise TypeError("group_id must be an integer array")
    if np.any(gid <= 0):
        raise ValueError("group_id must contain only positive (> 0) integers")
    return gid.astype(np.int64)


def build_init_params(data, mask, init_params, *, psf_model, finder=None, grouper=None,
                      aperture_radius=None, local_bkg_estimator=None, unit=None,
                      group_warning_threshold=25):
    """Assemble the initial-parameter table the fit starts from.

    Parameters
    ----------
    data : ndarray (ny, nx)
        Image (units stripped).
    mask : ndarray (ny, nx) bool or None
        Pixels to ignore (non-finite pixels already included).
    init_params : Table or None
        User table (any accepted column spelling) or None to run ``finder``.

    Returns
    -------
    table : QTable or None
        Columns ``id, group_id, local_bkg, x_init, y_init, flux_init`` (+ extra ``<p>_init`` for
        other free model parameters), plain floats; None when the finder found nothing.
    finder_results : Table or None
        What the finder returned (None when init_params was given).
    """
    xname, yname, fname = model_main_params(psf_model)
    extra = [p for p in psf_model.param_names
             if p not in (xname, yname, fname) and not psf_model.fixed[p]]
    finder_results = None
    if init_params is not None:
        table = _normalise_user_table(init_params, extra, unit)
        ids = np.asarray(table["id"])
        if len(ids) > 1 and np.any(np.diff(ids) < 0):  # photutils returns rows sorted by id
            table = table[np.argsort(ids, kind="stable")]
    else:
        if finder is None:
            raise ValueError("finder must be defined if init_params is not input (finder must be "
                             "given when init_params is not input)")
        finder_data = data if unit is None else u.Quantity(data, unit)
        finder_results = finder(finder_data, mask=mask)
        if finder_results is None or len(finder_results) == 0:
            return None, finder_results
        table = _table_from_finder(finder_results)

    xs = np.asarray(table["x_init"])
    ys = np.asarray(table["y_init"])
    if "local_bkg" not in table.colnames:
        if local_bkg_estimator is None:
            table["local_bkg"] = np.zeros(len(table))
        else:
            bkg = local_bkg_estimator(data, xs, ys, mask=mask)
            table["local_bkg"] = np.asarray(getattr(bkg, "value", bkg), dtype=float)
    if "flux_init" not in table.colnames:
        if aperture_radius is None:
            raise ValueError("aperture_radius must be defined if a flux column is not in "
                             "init_params (aperture_radius must be given when init_params has "
                             "no flux column)")
        from crowdphot.aperture.core import CircularAperture

        good = np.isfinite(xs) & np.isfinite(ys)
        flux = np.full(len(table), np.nan)
        if np.any(good):
            aper = CircularAperture(np.column_stack([xs[good], ys[good]]), r=aperture_radius)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CrowdphotWarning)
                sums, _ = aper.do_photometry(data, mask=mask)
            flux[good] = np.asarray(getattr(sums, "value", sums), dtype=float)
        bkg = np.asarray(table["local_bkg"], dtype=float)
        finite = np.isfinite(bkg) & good & (bkg != 0)
        if np.any(finite):
            # the aperture sum holds the sky level times the (unmasked, in-image) aperture
            # area, so the sky is removed per unit area; photutils 3.0 subtracts it only once
            aper = CircularAperture(np.column_stack([xs[finite], ys[finite]]),
                                    r=aperture_radius)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CrowdphotWarning)
                area, _ = aper.do_photometry(np.ones(data.shape), mask=mask)
            flux[finite] -= bkg[finite] * np.asarray(getattr(area, "value", area), dtype=float)
        table["flux_init"] = flux

    if "group_id" in table.colnames:
        table["group_id"] = _check_group_ids(table["group_id"])
    elif grouper is not None:
        table["group_id"] = _check_group_ids(grouper(xs, ys))
    else:
        table["group_id"] = np.asarray(table["id"], dtype=np.int64)

    if len(table):
        _, counts = np.unique(table["group_id"], return_counts=True)
        if counts.max() > group_warning_threshold:
            from crowdphot.utils.exceptions import LargeGroupWarning

            warnings.warn(  # photutils' wording and class (an AstropyUserWarning)
                f"Some groups have more than {group_warning_threshold} sources. Fitting such "
                "groups may take a long time and be error-prone. You may want to consider "
                'using different `SourceGrouper` parameters or changing the "group_id" column '
                'in "init_params". (crowdphot fits them jointly with a sparse solver; raise '
                "group_warning_threshold to silence.)",
                LargeGroupWarning,
                stacklevel=3,
            )
    for name in extra:
        if f"{name}_init" not in table.colnames:
            table[f"{name}_init"] = float(getattr(psf_model, name).value)
    order = ["id", "group_id", "local_bkg", "x_init", "y_init", "flux_init"]
    order += [f"{name}_init" for name in extra]
    return table[order], finder_results


def validate_xy_bounds(xy_bounds):
    if xy_bounds is None:
        return None
    vals = np.atleast_1d(np.asarray(xy_bounds, dtype=object))
    if vals.ndim != 1 or vals.size not in (1, 2):
        raise ValueError("xy_bounds must be a scalar or a pair (bx, by)")
    if vals.size == 1:
        vals = np.array([vals[0], vals[0]], dtype=object)
    out = []
    for v in vals:
        if v is None:
            out.append(None)
            continue
        out.append(positive_real("xy_bounds", v))
    if out[0] is None and out[1] is None:
        return None
    return tuple(out)


def accepts_maxiter(fitter):
    """Whether ``fitter(...)`` names a ``maxiter`` argument (photutils' test)."""
    import inspect

    try:
        return "maxiter" in inspect.signature(fitter.__call__).parameters
    except (TypeError, ValueError):
        return True


def check_fit_shape(fit_shape, compat=None):
    """``fit_shape`` as an ``(ny, nx)`` tuple of odd ints: >= 3, or >= 1 with 'photutils'.

    With ``compat='photutils'`` photutils' rule, order and words: odd first, then >= 1 (a
    1-pixel stamp flags its sources too_few_pixels). By default a stamp must be at least
    3 x 3, the fewest pixels that can constrain x, y and flux.
    """
    if compat != "photutils":
        pair = as_pair("fit_shape", fit_shape, odd=True)  # odd first, as photutils
        if np.any(pair < 3):
            raise ValueError(f"fit_shape must be >= 3, got {fit_shape!r}: a smaller stamp "
                             "cannot constrain x, y and flux (compat='photutils' accepts "
                             "photutils' >= 1)")
        return tuple(int(v) for v in pair)
    pair = as_pair("fit_shape", fit_shape)
    if np.any(pair % 2 == 0):
        raise ValueError("fit_shape must have an odd value for both axes")
    if np.any(pair < 1):
        raise ValueError("fit_shape must be >= 1")
    return tuple(int(v) for v in pair)
