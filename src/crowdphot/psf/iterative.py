"""Iterative PSF photometry: find, fit, subtract, find again in the residual (photutils 3 API)."""

from __future__ import annotations

import threading
import warnings

import numpy as np
from astropy.table import vstack

from crowdphot.core.validate import positive_real
from crowdphot.psf._inputs import _table_from_finder, coerce_inputs
from crowdphot.psf.likelihood import sky_map
from crowdphot.psf.photometry import (
    PSFPhotometry,
    PSFPhotometryResult,
    _LatestResultMixin,
)
from crowdphot.utils._deprecation import renamed_argument
from crowdphot.utils._tables import add_deprecated_aliases

__all__ = ["IterativePSFPhotometry"]


def _init_from(results, init_cols):
    """``results_to_init_params`` of the given rows (all valid), ids renumbered."""
    tmp = PSFPhotometryResult(results=results, init_params=None, finder_results=None,
                              fit_info=None, psf_model=None, main_params=None, unit=None)
    return tmp.results_to_init_params()[init_cols]


def _valid_rows(results):
    """Rows kept by ``results_to_init_params`` (all fitted values finite)."""
    fit_cols = [c for c in results.colnames if c.endswith("_fit")]
    return np.all([np.isfinite(np.asarray(getattr(results[c], "value", results[c])))
                   for c in fit_cols], axis=0)


class IterativePSFPhotometry(_LatestResultMixin):
    """Iterative PSF photometry, as photutils 3's ``IterativePSFPhotometry``.

    Each iteration fits the sources, subtracts the fitted models and runs the ``finder`` on
    the residual image. In ``mode='new'`` only the newly found sources are fitted (on the
    residual); in ``mode='all'`` all sources found so far are refitted together on the original
    data (a ``grouper`` is then required so that new neighbours are fitted jointly).

    Parameters
    ----------
    psf_model, fit_shape, finder : see :class:`PSFPhotometry` (``finder`` is required)
    maxiters : int
        Maximum number of find/fit iterations.
    mode : {'new', 'all'}
    sub_shape : int, (ny, nx) or None
        Stamp used to subtract fitted models; default: the model's bounding box.
    **kwargs
        grouper, fitter, fitter_maxiters, xy_bounds, aperture_radius (required),
        local_bkg_estimator, group_warning_threshold, progress_bar, shared_pixels,
        fit_sky (one sky per group, fitted in every iteration), likelihood, read_noise, gain
        crlb, subtract_neighbors (all-star fitting in every iteration), merge_separation,
        blend_test, bias_correction, compat, as for PSFPhotometry (likelihood='poisson' needs
        mode='all'; ``compat='photutils'``: photutils' behaviour, see PSFPhotometry).
    drop_significance : float, optional
        crowdphot extension (DAOPHOT ALLSTAR). Sources whose fitted ``flux / flux_err`` is
        below this are dropped: in mode 'all' they do not start the next iteration's refit,
        and they are removed from the returned table; ``results.meta['n_dropped']`` counts
        them. Default None: nothing dropped (photutils; refused with ``compat='photutils'``).

    Examples
    --------
    >>> from crowdphot import (CircularGaussianPRF, DAOStarFinder, IterativePSFPhotometry,
    ...                        make_psf_model_image)
    >>> model = CircularGaussianPRF(fwhm=2.5)
    >>> data, truth = make_psf_model_image((64, 64), model, 4, flux=(800, 1000),
    ...                                    min_separation=12, seed=1, model_shape=(11, 11))
    >>> finder = DAOStarFinder(threshold=20, fwhm=2.5)
    >>> phot = IterativePSFPhotometry(model, (5, 5), finder, aperture_radius=4, maxiters=2)
    >>> len(phot(data))
    4
    """

    _run_name = "IterativePSFPhotometry"

    @renamed_argument("localbkg_estimator", "local_bkg_estimator")
    def __init__(self, psf_model, fit_shape, finder, *, grouper=None, fitter=None,
                 fitter_maxiters=100, xy_bounds=None, maxiters=3, mode="new",
                 aperture_radius=None, local_bkg_estimator=None, group_warning_threshold=25,
                 sub_shape=None, progress_bar=False, shared_pixels=None, fit_sky=False,
                 likelihood="gaussian", read_noise=None, gain=1.0, crlb=False,
                 subtract_neighbors=False, merge_separation=None, drop_significance=None,
                 blend_test=True, bias_correction=False, compat=None):
        if finder is None:
            raise ValueError("finder cannot be None for IterativePSFPhotometry")
        if aperture_radius is None:
            raise ValueError("aperture_radius cannot be None for IterativePSFPhotometry")
        if np.ndim(maxiters) != 0:  # photutils' class and wording
            raise ValueError(f"maxiters must be a strictly-positive scalar, got {maxiters!r}")
        if int(positive_real("maxiters", maxiters)) != maxiters:
            raise ValueError("maxiters must be an integer (strictly-positive)")
        if mode not in ("new", "all"):
            raise ValueError("mode must be 'new' or 'all'")
        if mode == "all" and grouper is None:
            raise ValueError("grouper must be input for the 'all' mode")
        if likelihood == "poisson" and mode == "new":
            # mode 'new' fits residual images, whose pixel variances the model does not know
            raise ValueError("likelihood='poisson' needs mode='all' (with a grouper)")
        self._psfphot = PSFPhotometry(
            psf_model, fit_shape, finder=finder, grouper=grouper, fitter=fitter,
            fitter_maxiters=fitter_maxiters, xy_bounds=xy_bounds,
            aperture_radius=aperture_radius, local_bkg_estimator=local_bkg_estimator,
            group_warning_threshold=group_warning_threshold, progress_bar=progress_bar,
            shared_pixels=shared_pixels, fit_sky=fit_sky, likelihood=likelihood,
            read_noise=read_noise, gain=gain, crlb=crlb,
            subtract_neighbors=subtract_neighbors, merge_separation=merge_separation,
            blend_test=blend_test, bias_correction=bias_correction, compat=compat)
        # the iterations fit uncorrected values (each refit starts from the previous fit);
        # the final table is corrected once (the correction does not depend on the data)
        self.bias_correction = self._psfphot.bias_correction
        self._psfphot.bias_correction = False
        if drop_significance is not None and compat is not None:  # check_compat_options' words
            raise ValueError("compat='photutils' reproduces photutils, which has no "
                             "drop_significance; drop compat or these options")
        if drop_significance is not None:
            drop_significance = positive_real("drop_significance", drop_significance)
        self.drop_significance = drop_significance
        self.maxiters = int(maxiters)
        self.mode = mode
        if sub_shape is not None:
            from crowdphot.core.validate import as_pair

            sub_shape = tuple(int(v) for v in as_pair("sub_shape", sub_shape, lower_bound=0,
                                                      odd=True))
        self.sub_shape = sub_shape
        self._last = threading.local()

    def __getattr__(self, name):
        # configuration shared with the wrapped PSFPhotometry (psf_model, finder, ...)
        if name in PSFPhotometry._ATTRS:
            return getattr(self.__dict__["_psfphot"], name)
        raise AttributeError(name)

    def __repr__(self):
        args = ", ".join(f"{a}={getattr(self, a)!r}" for a in
                         (*PSFPhotometry._ATTRS, "maxiters", "mode", "sub_shape"))
        return f"{type(self).__name__}({args})"

    def run(self, data, *, mask=None, error=None, init_params=None, sky=None):
        """Stateless call: ``(combined PSFPhotometryResult or None, per-iteration results)``."""
        data, mask, error, unit = coerce_inputs(data, mask, error)
        sky_q = 0.0 if sky is None else sky_map(sky, data.shape, unit)  # in the data
        if unit is not None:
            import astropy.units as u

            data_q = u.Quantity(data, unit)
            error_q = None if error is None else u.Quantity(error, unit)
            sky_q = u.Quantity(sky_q, unit)
        else:
            data_q, error_q = data, error
        sky = None if sky is None else sky_q
        if self.bias_correction:
            from crowdphot.psf._biascorr import check_bias_correction

            check_bias_correction(True, likelihood=self._psfphot.likelihood,
                                  error_given=error is not None)
        first = self._psfphot.run(data_q, mask=mask, error=error_q, init_params=init_params,
                                  sky=sky)
        if first is None:
            return None, []
        per_iter = [first]
        n_dropped = 0
        # shallow copies: the per-iteration results in fit_results stay as they were fitted
        table = first.results.copy(copy_data=False)
        table["iter_detected"] = np.ones(len(table), dtype=np.int64)
        current = first
        residual = data_q
        for it in range(2, self.maxiters + 1):
            residual = current.make_residual_image(residual, psf_shape=self.sub_shape)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no sources found" is the normal end
                found = self._psfphot.finder(residual - sky_q, mask=mask)
            if found is None or len(found) == 0:
                break
            new = _table_from_finder(found)
            if self.mode == "all":
                # previous fits (extra free parameters included) start the joint refit;
                # sources whose fit failed are dropped, as photutils does
                init_cols = ["id"] + [c for c in current.results.colnames
                                      if c.endswith("_init")]
                valid = _valid_rows(current.results)
                if self.drop_significance is not None:
                    weak = valid & ~self._significant(current.results)
                    n_dropped += int(np.count_nonzero(weak))
                    valid &= ~weak
                prev = _init_from(current.results[valid], init_cols)
                new["id"] = np.arange(len(new)) + len(prev) + 1
                new = self._with_aperture_flux(residual - sky_q, mask, new, unit)
                for name in init_cols[4:]:  # extra free parameters start at the model value
                    alias = name[: -len("_init")]
                    new[name] = float(getattr(self._psfphot.psf_model, alias).value)
                init = vstack([prev, new[init_cols]])
                detected = np.concatenate([np.asarray(table["iter_detected"])[valid],
                                           np.full(len(new), it)])
                current = self._psfphot.run(data_q, mask=mask, error=error_q, init_params=init,
                                            sky=sky)
                if current is None:
                    break
                table = current.results.copy(copy_data=False)
                table["iter_detected"] = detected
                residual = data_q
            else:
                current = self._psfphot.run(residual, mask=mask, error=error_q, init_params=new,
                                            sky=sky)
                if current is None:
                    break
                new_tbl = current.results.copy(copy_data=False)
                new_tbl["id"] = new_tbl["id"] + np.max(table["id"])
                new_tbl["group_id"] = new_tbl["group_id"] + np.max(table["group_id"])
                new_tbl["iter_detected"] = np.full(len(new_tbl), it, dtype=np.int64)
                new_tbl.meta = {}
                table = vstack([table, new_tbl])
            per_iter.append(current)
        if self.mode == "new" and len(per_iter) > 1 and self._psfphot.compat is None:
            _flag_later_neighbours(self._psfphot, table, data_q, error_q, mask,
                                   first._main_params)
        if self.bias_correction:
            from crowdphot.psf._biascorr import correct_table

            # group ids are unique across iterations ('new' mode offsets them)
            bias = correct_table(table, self._psfphot.psf_model, self._psfphot.fit_shape,
                                 error, mask, fit_sky=self._psfphot.fit_sky)
            n_corrected = int(np.count_nonzero(np.all(np.isfinite(bias), axis=1)))
        if self.drop_significance is not None:
            weak = ~self._significant(table)
            n_dropped += int(np.count_nonzero(weak))
            table = table[~weak]
        cols = list(table.colnames)
        cols.remove("iter_detected")
        cols.insert(cols.index("group_size") + 1, "iter_detected")
        # vstack builds a fresh table: restore the pre-3.0 column alias
        table = add_deprecated_aliases(table[cols], {"npixfit": "n_pixels_fit"})
        table.meta.update({"psf_class": type(self).__name__, "maxiters": self.maxiters,
                           "mode": self.mode, "sub_shape": self.sub_shape})
        if self.drop_significance is not None:
            table.meta.update(drop_significance=self.drop_significance, n_dropped=n_dropped)
        if self.bias_correction:
            table.meta.update(bias_correction=True, n_bias_corrected=n_corrected)
        combined = PSFPhotometryResult(
            results=table, init_params=None, finder_results=first.finder_results,
            fit_info=None, psf_model=self._psfphot.psf_model,
            main_params=first._main_params, unit=unit, progress_bar=self._psfphot.progress_bar)
        return combined, per_iter

    def _significant(self, results):
        """Rows whose ``flux_fit / flux_err`` reaches ``drop_significance`` (NaN: kept)."""
        def plain(name):
            return np.asarray(getattr(results[name], "value", results[name]), dtype=float)

        with np.errstate(invalid="ignore", divide="ignore"):
            snr = plain("flux_fit") / plain("flux_err")
        return ~(snr < self.drop_significance)

    def _with_aperture_flux(self, data, mask, table, unit):
        # photutils measures new sources' starting flux on the residual without sky removal
        from crowdphot.aperture.core import CircularAperture

        ap = CircularAperture(np.column_stack([table["x_init"], table["y_init"]]),
                              r=self._psfphot.aperture_radius)
        flux, _ = ap.do_photometry(data, mask=mask)
        table["flux_init"] = flux
        return table

    def __call__(self, data, *, mask=None, error=None, init_params=None, sky=None):
        """Run the iterative photometry; returns the combined results table (or None).

        ``sky``: as for :class:`PSFPhotometry` (a sky map contained in ``data``).

        Output columns are photutils 3's; among them:

<flags column>
        """
        combined, per_iter = self.run(data, mask=mask, error=error, init_params=init_params,
                                      sky=sky)
        self._last.result = combined
        self._last.fit_results = per_iter
        return None if combined is None else combined.results

    @property
    def fit_results(self):
        """Per-iteration :class:`PSFPhotometryResult` objects of the latest call."""
        return list(getattr(self._last, "fit_results", []))


def _document_flags():
    from crowdphot.psf.flags import flags_column_doc

    doc = IterativePSFPhotometry.__call__.__doc__
    IterativePSFPhotometry.__call__.__doc__ = doc.replace("<flags column>", flags_column_doc())


_document_flags()


def _flag_later_neighbours(phot, table, data, error, mask, main_params):
    """mode='new': flag 65536 for light of stars found in later iterations (which was on the
    earlier stars' stamps, unmodelled); batched engine only, as PSFPhotometry's own test."""
    from crowdphot.psf._fastpath import use_fast_path
    from crowdphot.psf.contamination import flag_later_neighbours

    if use_fast_path(phot.psf_model, phot.fitter, main_params, phot.fit_shape):
        flag_later_neighbours(table, data, phot.psf_model, phot.fit_shape, error=error,
                              mask=mask, fit_sky=phot.fit_sky,
                              subtract_neighbors=phot.subtract_neighbors)
