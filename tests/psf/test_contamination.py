"""Flags 65536 (contaminated) and 131072 (unconstrained)
(crowdphot.psf.contamination): seeded scenes, truth-based oracles, compat mode."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.table import QTable

from crowdphot import (
    CircularGaussianPRF,
    PSFPhotometry,
    SourceGrouper,
    make_model_image,
)
from crowdphot.psf.contamination import contamination_test
from crowdphot.psf.flags import PSF_FLAGS

PSF = CircularGaussianPRF(fwhm=3.0)
CONT = int(PSF_FLAGS.CONTAMINATED)
UNC = int(PSF_FLAGS.UNCONSTRAINED)
NOISE = 5.0


def _scene(seed, n, shape, flux, min_sep=0.0):
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    while len(xs) < n:
        x, y = rng.uniform(2, shape[1] - 3), rng.uniform(2, shape[0] - 3)
        if all((x - a) ** 2 + (y - b) ** 2 >= min_sep ** 2 for a, b in zip(xs, ys, strict=True)):
            xs.append(x)
            ys.append(y)
    truth = QTable({"x_0": np.array(xs), "y_0": np.array(ys), "flux": rng.uniform(*flux, n)})
    img = make_model_image(shape, PSF, truth, model_shape=(15, 15))
    img = img + rng.normal(0, NOISE, shape)
    init = QTable({"x": truth["x_0"] + rng.normal(0, 0.3, n),
                   "y": truth["y_0"] + rng.normal(0, 0.3, n)})
    return img, truth, init


def _fit(img, init, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not-converged warnings of faint stars
        return PSFPhotometry(PSF, (5, 5), aperture_radius=3, **kw)(
            img, error=np.full(img.shape, NOISE), init_params=init)


def _pull(tab, truth):
    return (np.asarray(tab["flux_fit"], float) - np.asarray(truth["flux"])) / np.asarray(
        tab["flux_err"], float)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_ungrouped_crowded_flags0_pulls(seed):
    # 300 faint stars (S/N ~1-4) on 128², no grouper (photutils' default): neighbours' wings
    # in the fit stamps push fluxes up by many errors; the flag removes them from flags 0
    img, truth, init = _scene(seed, 300, (128, 128), (20, 60))
    tab = _fit(img, init)
    flags = np.asarray(tab["flags"])
    pull = _pull(tab, truth)
    clean = flags == 0
    assert clean.sum() > 80
    assert np.all(np.abs(pull[clean]) < 4)
    # the bit carries the outliers: among the stars it alone excludes, pulls far out
    only = (flags & ~CONT) == 0
    assert np.nanmax(np.abs(pull[only])) > 4
    assert np.mean(pull[only & ~clean]) > np.mean(pull[clean]) + 0.5


def test_bias_estimate_matches_the_grouped_fit():
    # a faint star 5 px from a bright one: fitted alone, it absorbs the bright star's wing;
    # fitted with it (one group) it does not. The test's bias is that difference.
    truth = QTable({"x_0": [20.0, 25.0], "y_0": [20.0, 20.3], "flux": [2000.0, 300.0]})
    rng = np.random.default_rng(3)
    img = make_model_image((41, 41), PSF, truth, model_shape=(15, 15))
    img = img + rng.normal(0, NOISE, img.shape)
    init = QTable({"x": truth["x_0"], "y": truth["y_0"]})
    alone = _fit(img, init)
    joint = _fit(img, init, grouper=SourceGrouper(6))
    assert np.asarray(alone["flags"]).tolist() == [0, CONT]
    assert np.asarray(joint["flags"]).tolist() == [0, 0]
    err = np.full(img.shape, NOISE)
    col = {c: np.asarray(alone[c], float) for c in ("x_fit", "y_fit", "flux_fit", "flux_err",
                                                      "x_init", "y_init")}
    test = contamination_test(img, PSF, col["x_fit"], col["y_fit"], col["flux_fit"],
                              col["flux_err"], x_init=col["x_init"], y_init=col["y_init"],
                              group_id=np.asarray(alone["group_id"]), fit_shape=(5, 5),
                              error=err)
    shift = np.asarray(alone["flux_fit"], float) - np.asarray(joint["flux_fit"], float)
    assert shift[1] > 1.2 * float(alone["flux_err"][1])
    assert abs(test.bias[1] - shift[1]) < 0.2 * shift[1]
    assert abs(test.bias[0] - shift[0]) < 0.2 * float(alone["flux_err"][0])
    assert test.contaminated.tolist() == [False, True]
    # the star alone on its stamp: sigma_iso is its reported error
    np.testing.assert_allclose(test.sigma_iso, col["flux_err"], rtol=1e-3)


@pytest.mark.parametrize("flux", [(20, 60), (100, 2000)])
def test_isolated_stars_never_flagged(flux):
    img, truth, init = _scene(5, 60, (256, 256), flux, min_sep=20)
    for kw in ({}, {"grouper": SourceGrouper(6)}, {"grouper": SourceGrouper(6),
                                                   "fit_sky": True}):
        flags = np.asarray(_fit(img, init, **kw)["flags"])
        assert not np.any(flags & (CONT | UNC))


def test_moderately_crowded_bright_field_not_flagged():
    # 100 stars of flux 100-1000 on 128² at least 5 px apart, ungrouped: no neighbour
    # biases a flux by its error, and nothing is flagged
    img, truth, init = _scene(7, 100, (128, 128), (100, 1000), min_sep=5)
    tab = _fit(img, init)
    assert np.count_nonzero(np.asarray(tab["flags"]) & CONT) == 0


def test_only_unmodelled_light_counts():
    img, truth, init = _scene(11, 300, (128, 128), (20, 60))
    grouped = np.asarray(_fit(img, init, grouper=SourceGrouper(6))["flags"])
    allstar = np.asarray(_fit(img, init, grouper=SourceGrouper(6),
                              subtract_neighbors=True)["flags"])
    ungrouped = np.asarray(_fit(img, init)["flags"])
    # groups at 6 px leave the wings beyond 6 px unmodelled: rarely more than an error
    assert np.count_nonzero(grouped & CONT) < 0.1 * np.count_nonzero(ungrouped & CONT)
    assert not np.any(allstar & CONT)  # all-star subtracts every other group's model


def test_compat_photutils_never_sets_extension_bits():
    img, truth, init = _scene(12, 300, (128, 128), (20, 60))
    default = np.asarray(_fit(img, init)["flags"])
    compat = np.asarray(_fit(img, init, compat="photutils")["flags"])
    assert np.any(default & CONT)
    assert not np.any(compat & ~np.int64(4095))


def test_unconstrained_fluxes_are_flagged():
    # faint crowded field, groups at 6 px: fits that end with two members on one star report
    # flux errors of 10-1e6 x the star's own (isolated) error; no such star keeps flags 0
    img, truth, init = _scene(13, 300, (128, 128), (20, 60))
    err_img = np.full(img.shape, NOISE)
    for kw in ({}, {"fit_sky": True}, {"subtract_neighbors": True}):
        tab = _fit(img, init, grouper=SourceGrouper(6), **kw)
        col = {c: np.asarray(tab[c], float) for c in ("x_fit", "y_fit", "flux_fit",
                                                        "flux_err", "x_init", "y_init")}
        test = contamination_test(img, PSF, col["x_fit"], col["y_fit"], col["flux_fit"],
                                  col["flux_err"], x_init=col["x_init"], y_init=col["y_init"],
                                  group_id=np.asarray(tab["group_id"]), fit_shape=(5, 5),
                                  error=err_img, fit_sky=bool(kw.get("fit_sky")))
        flags = np.asarray(tab["flags"])
        inflated = col["flux_err"] > 10 * test.sigma_iso
        assert inflated.sum() >= 5
        assert np.all(flags[inflated] & UNC)
        assert not np.any(flags[~inflated] & UNC)
        # a star alone in its group has its isolated error
        alone = np.asarray(tab["group_size"]) == 1
        ok = alone & np.isfinite(col["flux_err"])
        np.testing.assert_allclose(col["flux_err"][ok], test.sigma_iso[ok], rtol=0.02)


def test_hook_on_fabricated_values():
    from crowdphot.psf.contamination import catalog_contamination_flags

    # two stars 0.3 px apart in one group with errors 1e4: unconstrained; a lone star with
    # its own error: not
    t = QTable({"x_init": [10.0, 10.3, 30.0], "y_init": [10.0, 10.0, 10.0],
                "group_id": [1, 1, 2]})
    vals = {"x": np.array([10.0, 10.3, 30.0]), "y": np.full(3, 10.0),
            "flux": np.array([500.0, -400.0, 100.0])}
    sig = 5.0 / np.sqrt(np.sum(PSF.psf_stamps([30.0], [10.0], 5)[0] ** 2))
    cont, unc = catalog_contamination_flags(np.zeros((20, 40)), PSF, t, vals,
                                            np.array([1e4, 1e4, sig]), (5, 5),
                                            error=np.full((20, 40), 5.0))
    assert unc.tolist() == [True, True, False] and not cont.any()


def test_order_of_fits():
    # a faint star 4 px from a bright one, each fitted alone. If the bright one was fitted
    # first and subtracted before the faint one's fit (iterative photometry on the residual
    # image), its light does not count for the faint one; the faint one's light still
    # counts for the bright one, whose fit never saw it
    x, y = np.array([20.0, 24.0]), np.array([20.0, 20.0])
    flux, err = np.array([3000.0, 100.0]), np.array([25.0, 24.0])
    kw = dict(x_init=x, y_init=y, group_id=np.array([1, 2]), fit_shape=(5, 5),
              error=np.full((41, 41), NOISE))
    both = contamination_test(np.zeros((41, 41)), PSF, x, y, flux, err, **kw)
    later = contamination_test(np.zeros((41, 41)), PSF, x, y, flux, err, order=[1, 2], **kw)
    assert both.bias[1] > 1.5 * err[1] and later.bias[1] == 0
    assert later.bias[0] == both.bias[0] > 0
    first = contamination_test(np.zeros((41, 41)), PSF, x, y, flux, err, order=[2, 1], **kw)
    assert first.bias[0] == 0 and first.bias[1] == both.bias[1]


def test_iterative_new_mode_flags_light_of_later_stars():
    # the finder misses the 800 star 4 px from a 5000 one until the second iteration: the
    # bright star's first-iteration fit absorbed its wing (5040 +- 23, true 5000)
    from crowdphot import DAOStarFinder, IterativePSFPhotometry

    truth = QTable({"x_0": [20.0, 24.0], "y_0": [20.0, 20.5], "flux": [5000.0, 800.0]})
    rng = np.random.default_rng(1)
    img = make_model_image((41, 41), PSF, truth, model_shape=(15, 15))
    img = img + rng.normal(0, NOISE, img.shape)
    err = np.full(img.shape, NOISE)
    flags = {}
    for compat in (None, "photutils"):
        it = IterativePSFPhotometry(PSF, (5, 5), DAOStarFinder(threshold=50, fwhm=3.0),
                                    aperture_radius=3, maxiters=3, compat=compat)
        tab = it(img, error=err)
        assert np.asarray(tab["iter_detected"]).tolist() == [1, 2]
        flags[compat] = np.asarray(tab["flags"])
        pull = (float(tab["flux_fit"][0]) - 5000.0) / float(tab["flux_err"][0])
        assert pull > 1
    assert flags[None].tolist() == [CONT, 0]
    assert flags["photutils"].tolist() == [0, 0]


def test_forced_photometry_and_units():
    # fixed positions: the response is the flux column alone; a Quantity image flags the same
    import astropy.units as u

    truth = QTable({"x_0": [20.0, 25.0], "y_0": [20.0, 20.3], "flux": [2000.0, 300.0]})
    rng = np.random.default_rng(3)
    img = make_model_image((41, 41), PSF, truth, model_shape=(15, 15))
    img = img + rng.normal(0, NOISE, img.shape)
    init = QTable({"x": truth["x_0"], "y": truth["y_0"]})
    psf = CircularGaussianPRF(fwhm=3.0)
    psf.x_0.fixed = psf.y_0.fixed = True
    err = np.full(img.shape, NOISE)
    phot = PSFPhotometry(psf, (5, 5), aperture_radius=3)
    forced = phot(img, error=err, init_params=init)
    assert np.asarray(forced["flags"]).tolist() == [0, CONT]
    with_units = phot(img * u.Jy, error=err * u.Jy, init_params=init)
    assert np.asarray(with_units["flags"]).tolist() == [0, CONT]


def test_astropy_fitter_path_flags_the_same():
    # a built-in model with an astropy fitter (the generic per-group path): same test
    from astropy.modeling.fitting import TRFLSQFitter

    img, truth, init = _scene(14, 60, (96, 96), (50, 500))
    err = np.full(img.shape, NOISE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batched = PSFPhotometry(PSF, (5, 5), aperture_radius=3)(img, error=err,
                                                                 init_params=init)
        generic = PSFPhotometry(PSF, (5, 5), aperture_radius=3, fitter=TRFLSQFitter())(
            img, error=err, init_params=init)
    fb, fg = np.asarray(batched["flags"]), np.asarray(generic["flags"])
    assert np.count_nonzero(fg & CONT) >= 5
    both = (fb & ~CONT) == (fg & ~CONT)  # rows the two fits flag alike otherwise
    assert np.mean((fb & CONT)[both] == (fg & CONT)[both]) > 0.95
