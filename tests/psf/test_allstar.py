"""All-star fitting (``subtract_neighbors=True``, DAOPHOT ALLSTAR): every group fitted with the
light of all other groups' stars subtracted.

Oracles: a brute-force sum of every other-group star on every stamp; photutils' grouped
behaviour where no neighbour reaches a group; a noiseless crowded field fitted from the truth
(the grouped fit is biased by neighbours' wings, the all-star fit is not); a seeded noisy
field whose all-star fluxes are unbiased within their errors.
"""

import warnings

import numpy as np
import pytest
from astropy.table import QTable

from _scenes import faint_edge_scene
from crowdphot import (
    CircularGaussianPRF,
    DAOStarFinder,
    IterativePSFPhotometry,
    PSFPhotometry,
    SourceGrouper,
    make_psf_model_image,
)
from crowdphot.core.batched import stamp_origin
from crowdphot.psf.allstar import neighbor_stamps
from crowdphot.psf.flags import PSF_FLAGS


def _init(truth):
    return QTable({"x": truth["x_0"], "y": truth["y_0"], "flux": truth["flux"]})


def _fit(phot, data, init, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return phot(data, init_params=init, **kw)


def test_neighbor_stamps_brute_force():
    rng = np.random.default_rng(1)
    psf = CircularGaussianPRF(fwhm=2.5)
    n = 40
    x, y = rng.uniform(0, 60, n), rng.uniform(0, 60, n)
    flux = rng.uniform(100, 1000, n)
    group = rng.integers(1, 8, n)
    fs = (5, 7)
    xlo, ylo = stamp_origin(x, y, fs)
    got = neighbor_stamps(psf, x, y, flux, group, xlo, ylo, fs, reach=200.0)
    want = np.zeros((n, *fs))
    for i in range(n):
        for j in range(n):
            if group[j] != group[i]:
                want[i] += flux[j] * psf.psf_stamps([x[j]], [y[j]], fs, xlo=[xlo[i]],
                                                    ylo=[ylo[i]])[0]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # a finite reach keeps only the stars within it (plus half a stamp)
    near = neighbor_stamps(psf, x, y, flux, group, xlo, ylo, fs, reach=3.0)
    assert np.all(np.abs(near - want) <= np.abs(want) + 1e-12)
    assert np.abs(near - want).max() < 1e-3 * flux.max()


@pytest.fixture(scope="module")
def gridded_field():
    from crowdphot.datasets import jwst_like_psf_grid

    psf = jwst_like_psf_grid()
    data, truth = make_psf_model_image((512, 512), psf, 600, flux=(500, 50000),
                                       min_separation=8, seed=0)
    return psf, data, truth


def test_noiseless_crowded_field_unbiased(gridded_field):
    """The issue's goal field: grouped fits are biased by neighbours' wings; all-star not."""
    psf, data, truth = gridded_field
    ftrue = np.asarray(truth["flux"])
    faint = ftrue < 2000
    out = {}
    for sn in (False, True):
        phot = PSFPhotometry(psf, (5, 5), grouper=SourceGrouper(10), subtract_neighbors=sn)
        tab = _fit(phot, data, _init(truth))
        out[sn] = (np.asarray(tab["flux_fit"]) / ftrue - 1.0, tab)
    grouped, _ = out[False]
    assert np.median(grouped) > 1e-3  # the bias all-star fitting removes is there
    rel, tab = out[True]
    assert abs(np.median(rel)) <= 1e-4
    assert abs(np.median(rel[faint])) <= 5e-4
    assert np.max(np.abs(rel)) <= 5e-3
    assert np.all(tab["flags"] == 0)
    assert 1 <= tab.meta["allstar_passes"] <= 6
    assert tab.meta["subtract_neighbors"] is True


def test_isolated_groups_identical_to_grouped_fit():
    psf = CircularGaussianPRF(fwhm=2.5)  # support 12 px: stars 25+ px apart never reach
    data, truth = make_psf_model_image((120, 120), psf, 8, flux=(500, 1000),
                                       min_separation=25, seed=3, model_shape=(11, 11))
    rng = np.random.default_rng(3)
    data = data + rng.normal(0, 2.0, data.shape)
    a = _fit(PSFPhotometry(psf, (5, 5), grouper=SourceGrouper(6)), data, _init(truth),
             error=np.full(data.shape, 2.0))
    b = _fit(PSFPhotometry(psf, (5, 5), grouper=SourceGrouper(6), subtract_neighbors=True),
             data, _init(truth), error=np.full(data.shape, 2.0))
    for c in ("x_fit", "y_fit", "flux_fit", "flux_err", "flags"):
        np.testing.assert_array_equal(np.asarray(a[c]), np.asarray(b[c]))
    assert b.meta["allstar_passes"] == 0


def test_noisy_crowded_field_unbiased_within_errors():
    psf = CircularGaussianPRF(fwhm=3.0)
    data, truth = make_psf_model_image((200, 200), psf, 250, flux=(300, 3000),
                                       min_separation=5, seed=7, model_shape=(15, 15))
    sigma = 3.0
    noisy = data + np.random.default_rng(7).normal(0, sigma, data.shape)
    err = np.full(data.shape, sigma)
    init = _init(truth)
    res = {}
    for sn in (False, True):
        phot = PSFPhotometry(psf, (5, 5), grouper=SourceGrouper(6), subtract_neighbors=sn)
        tab = _fit(phot, noisy, init, error=err)
        pull = (np.asarray(tab["flux_fit"]) - truth["flux"]) / np.asarray(tab["flux_err"])
        res[sn] = pull[np.isfinite(pull)]
    n = len(res[True])
    # unbiased: mean pull within 4 standard errors of zero; the grouped fit is biased high
    assert abs(np.mean(res[True])) < 4 / np.sqrt(n)
    assert np.mean(res[False]) > np.mean(res[True])


def test_iterative_passes_option():
    psf = CircularGaussianPRF(fwhm=2.5)
    data, truth = make_psf_model_image((80, 80), psf, 20, flux=(800, 1500),
                                       min_separation=6, seed=2, model_shape=(11, 11))
    finder = DAOStarFinder(threshold=50, fwhm=2.5)
    it = IterativePSFPhotometry(psf, (5, 5), finder, grouper=SourceGrouper(4),
                                aperture_radius=3, maxiters=2, mode="all",
                                subtract_neighbors=True)
    assert it._psfphot.subtract_neighbors is True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tab = it(data)
    assert len(tab) >= 18
    assert it.fit_results[0].results.meta["subtract_neighbors"] is True


def test_option_checks():
    psf = CircularGaussianPRF(fwhm=2.5)
    with pytest.raises(TypeError, match="subtract_neighbors"):
        PSFPhotometry(psf, (5, 5), subtract_neighbors="yes")
    from astropy.modeling.fitting import LevMarLSQFitter

    data, truth = make_psf_model_image((40, 40), psf, 2, flux=(800, 1000), min_separation=10,
                                       seed=1, model_shape=(11, 11))
    phot = PSFPhotometry(psf, (5, 5), fitter=LevMarLSQFitter(), subtract_neighbors=True)
    with pytest.raises(ValueError, match="subtract_neighbors"):
        phot(data, init_params=_init(truth))


def test_cli_uses_all_star_by_default():
    from types import SimpleNamespace

    from crowdphot.cli.app import build_parser
    from crowdphot.cli.phot import _photometry

    psf = CircularGaussianPRF(fwhm=2.5)
    data, truth = make_psf_model_image((60, 60), psf, 6, flux=(800, 1500), min_separation=7,
                                       seed=4, model_shape=(11, 11))
    image = SimpleNamespace(data=data, mask=None, error=None)
    parser = build_parser()
    for extra, expected in (([], True), (["--no-subtract-neighbors"], False)):
        args = parser.parse_args(["phot", "x.fits", "-o", "out.ecsv", "--no-progress",
                                  "--group-radius", "4", *extra])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table, phot = _photometry(args, image, psf, None, _init(truth))
        assert phot.subtract_neighbors is expected
        assert (phot.merge_separation is not None) is expected
        assert len(table) == 6


@pytest.mark.parametrize("subtract", [False, True])
def test_merge_unresolvable_pairs(subtract):
    """Pairs at 0.2 FWHM merge into one star with the summed flux at the flux-weighted
    position; a resolved pair (1.6 FWHM) and isolated stars are untouched."""
    from crowdphot.core.render import render_image
    from crowdphot.psf.flags import PSF_FLAGS

    psf = CircularGaussianPRF(fwhm=2.5)
    x = np.array([20.0, 20.5, 50.0, 54.0, 80.0])
    y = np.array([20.0, 20.2, 50.0, 50.0, 20.0])
    f = np.array([3000.0, 1500.0, 2000.0, 2000.0, 2500.0])
    data = render_image((70, 100), psf, x, y, f, model_shape=(15, 15))
    sigma = 1.0
    data = data + np.random.default_rng(5).normal(0, sigma, data.shape)
    init = QTable({"x": x + 0.1, "y": y - 0.1, "flux": f})
    phot = PSFPhotometry(psf, (7, 7), grouper=SourceGrouper(6), subtract_neighbors=subtract,
                         merge_separation=0.37 * 2.5)
    tab = _fit(phot, data, init, error=np.full(data.shape, sigma))
    flags = np.asarray(tab["flags"])
    merged = (flags & PSF_FLAGS.MERGED) != 0
    assert merged.tolist() == [True, True, False, False, False]
    assert tab.meta["n_merged"] == 1
    assert np.isnan(tab["flux_fit"][1]) and np.isnan(tab["x_fit"][1])
    # one PSF fitted to a blend 0.54 px wide on a 7x7 stamp misses ~1.3 % in the wings
    assert abs(tab["flux_fit"][0] / 4500.0 - 1) < 0.02
    xw, yw = (3000 * 20.0 + 1500 * 20.5) / 4500, (3000 * 20.0 + 1500 * 20.2) / 4500
    assert np.hypot(tab["x_fit"][0] - xw, tab["y_fit"][0] - yw) < 0.05
    assert np.all(np.abs(np.asarray(tab["flux_fit"][2:]) - f[2:])
                  < 5 * np.asarray(tab["flux_err"][2:]))
    assert np.all(flags[[0, 2, 3, 4]] & PSF_FLAGS.NO_CONVERGENCE == 0)
    # without the option the pair is fitted as two (photutils)
    plain = _fit(PSFPhotometry(psf, (7, 7), grouper=SourceGrouper(6)), data, init,
                 error=np.full(data.shape, sigma))
    assert np.all(np.asarray(plain["flags"]) & PSF_FLAGS.MERGED == 0)
    assert "n_merged" not in plain.meta


def test_iterative_drops_insignificant_and_merges():
    psf = CircularGaussianPRF(fwhm=2.5)
    data, truth = make_psf_model_image((80, 80), psf, 15, flux=(800, 1500),
                                       min_separation=8, seed=6, model_shape=(11, 11))
    sigma = 2.0
    noisy = data + np.random.default_rng(6).normal(0, sigma, data.shape)
    finder = DAOStarFinder(threshold=4 * sigma, fwhm=2.5)  # also fires on noise peaks
    kw = dict(grouper=SourceGrouper(4), aperture_radius=3, maxiters=2, mode="all",
              subtract_neighbors=True)
    err = np.full(data.shape, sigma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loose = IterativePSFPhotometry(psf, (5, 5), finder, **kw)(noisy, error=err)
        strict = IterativePSFPhotometry(psf, (5, 5), finder, drop_significance=10.0,
                                        merge_separation=0.9, **kw)(noisy, error=err)
    snr = np.asarray(strict["flux_fit"]) / np.asarray(strict["flux_err"])
    assert np.all(~(snr < 10.0))
    assert strict.meta["n_dropped"] >= 1
    assert len(strict) >= 15 and len(strict) < len(loose)
    assert "n_dropped" not in loose.meta


def test_drop_significance_refused_with_compat():
    """photutils has no drop_significance: refused like the other crowdphot-only options."""
    psf = CircularGaussianPRF(fwhm=2.5)
    finder = DAOStarFinder(threshold=10, fwhm=2.5)
    with pytest.raises(ValueError, match="compat='photutils'.*no drop_significance"):
        IterativePSFPhotometry(psf, (5, 5), finder, aperture_radius=3, drop_significance=5.0,
                               compat="photutils")
    with pytest.raises(ValueError, match="drop_significance"):
        IterativePSFPhotometry(psf, (5, 5), finder, aperture_radius=3, drop_significance=-1.0)
    ok = IterativePSFPhotometry(psf, (5, 5), finder, aperture_radius=3, compat="photutils")
    assert ok.drop_significance is None


def _lattice_group(psf, seed=0):
    """150 stars on a jittered 15 x 10 lattice 7 px apart: one connected group at 10 px."""
    from crowdphot.core.render import render_image

    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(15), np.arange(10))
    x = 60 + gx.ravel() * 7.0 + rng.uniform(-1, 1, 150)
    y = 60 + gy.ravel() * 7.0 + rng.uniform(-1, 1, 150)
    f = 10 ** rng.uniform(np.log10(500), np.log10(50000), 150)
    data = render_image((220, 230), psf, x, y, f) + rng.normal(0, 1.0, (220, 230))
    return data, np.ones((220, 230)), QTable({"x": x, "y": y, "flux": f})


def test_flux_reach_grows_with_flux(gridded_field):
    from crowdphot.psf.allstar import flux_reach, model_reach

    psf = gridded_field[0]
    r = flux_reach(psf, np.array([1.0, 100.0, 1e4, 1e7, np.nan]), 1.0)
    assert np.all(np.diff(r[:4]) >= 0) and r[0] < r[3]
    assert r[3] == r[4] == model_reach(psf)
    # beyond the reach every pixel of the star is below the floor
    size = 101
    stamp = psf.psf_stamps([50.0], [50.0], (size, size), xlo=[0], ylo=[0])[0] * 100.0
    yy, xx = np.indices(stamp.shape)
    ring = np.maximum(np.abs(yy - 50), np.abs(xx - 50))
    assert np.abs(stamp[ring > r[1]]).max() < 1.0


def test_reduced_support_no_truncation_bias(gridded_field):
    """One 150-star connected group: the all-star fit couples each member only as far as its
    PSF exceeds the noise, the fainter wings come in as neighbours' light; fluxes and errors
    equal those of the fully coupled grouped fit (101 px support)."""
    psf = gridded_field[0]
    data, err, init = _lattice_group(psf)
    full = _fit(PSFPhotometry(psf, (5, 5), grouper=SourceGrouper(10)), data, init, error=err)
    assert len(np.unique(full["group_id"])) == 1
    fast = _fit(PSFPhotometry(psf, (5, 5), grouper=SourceGrouper(10), subtract_neighbors=True),
                data, init, error=err)
    e = np.asarray(full["flux_err"])
    d = (np.asarray(fast["flux_fit"]) - np.asarray(full["flux_fit"])) / e
    assert np.abs(d).max() < 0.05
    np.testing.assert_allclose(np.asarray(fast["flux_err"]), e, rtol=1e-3)
    assert np.all(fast["flags"] == 0)


def test_failed_member_not_kept_in_partners_model():
    """A member that runs off its stamp is held at its start and its group refitted.

    Before: a member stopped at the edge of its stamp with flux -1416 stayed in the model and
    its partner 5.6 px away came out at 1261 +- 24 (true 35) with flags 0.
    """
    psf, data, truth, inits = faint_edge_scene(2)
    init = inits[1]  # the script drew one for its grouped run first
    phot = PSFPhotometry(psf, (5, 5), aperture_radius=3, grouper=SourceGrouper(6),
                         subtract_neighbors=True)
    tab = _fit(phot, data, init, error=np.full(data.shape, 5.0))
    f, fe = np.asarray(tab["flux_fit"]), np.asarray(tab["flux_err"])
    flags = np.asarray(tab["flags"])
    ftrue = np.asarray(truth["flux"])
    good = flags == 0
    assert good.sum() > 150
    # the star: correct within its errors, or flagged
    k = int(np.argmin(np.hypot(truth["x_0"] - 64.7, truth["y_0"] - 66.4)))
    assert flags[k] != 0 or abs(f[k] - ftrue[k]) < 4 * fe[k] + 5
    # no unflagged star far from the truth: 300 Gaussian pulls give none beyond 5 sigma
    far = good & ~(np.abs(f - ftrue) <= 5 * fe + 5)
    assert far.sum() == 0, np.flatnonzero(far)
    pull = ((f - ftrue) / fe)[good]
    assert np.std(pull) < 1.2
    # every failed (left_stamp) member stays flagged, reported at its start with a finite flux
    left = (flags & 4096) > 0
    assert left.any() and np.all(flags[left] & 8)
    np.testing.assert_array_equal(np.asarray(tab["x_fit"])[left], np.asarray(init["x"])[left])
    assert np.all(np.isfinite(f[left]))
    # partners that absorbed a failed member's light carry the merged bit (no
    # merge_separation here), and each lies near a failed member of its group
    absorbed = np.flatnonzero(((flags & 16384) > 0) & ~left)
    assert len(absorbed) > 0
    gid = np.asarray(tab["group_id"])
    xi, yi = np.asarray(init["x"]), np.asarray(init["y"])
    for k in absorbed:
        mates = np.flatnonzero(left & (gid == gid[k]))
        assert len(mates) and np.hypot(xi[mates] - xi[k], yi[mates] - yi[k]).min() < 10


def test_no_neighbour_light_at_all():
    """No other group within reach (one star, far-apart stars) or no fitted star at all (the
    only one masked): the all-star fit is the grouped fit and makes no pass."""
    psf = CircularGaussianPRF(fwhm=2.5)
    for n, masked in ((1, False), (2, False), (1, True)):
        data, truth = make_psf_model_image((60, 60), psf, n, flux=(900, 1000),
                                           min_separation=40, seed=4, model_shape=(9, 9))
        mask = np.full(data.shape, masked)
        init = _init(truth)
        a = _fit(PSFPhotometry(psf, (5, 5)), data, init, mask=mask)
        b = _fit(PSFPhotometry(psf, (5, 5), subtract_neighbors=True), data, init, mask=mask)
        np.testing.assert_array_equal(np.asarray(a["flux_fit"]), np.asarray(b["flux_fit"]))
        np.testing.assert_array_equal(np.asarray(a["flags"]), np.asarray(b["flags"]))
        assert b.meta["allstar_passes"] == 0


def test_poisson_likelihood_all_star():
    """Maximum-likelihood all-star fit: the neighbours' light is subtracted from the data and
    is part of every pixel's expected counts; pulls unbiased, the grouped fit's are not."""
    psf = CircularGaussianPRF(fwhm=3.0)
    data, truth = make_psf_model_image((200, 200), psf, 400, flux=(2000, 20000),
                                       min_separation=5, seed=3, model_shape=(21, 21))
    rng = np.random.default_rng(0)
    counts = rng.poisson(data + 20.0) + rng.normal(0.0, 3.0, data.shape)
    init = QTable({"x": truth["x_0"], "y": truth["y_0"], "flux": 0.9 * truth["flux"],
                   "local_bkg": np.full(len(truth), 20.0)})
    pulls, clean = {}, {}
    for sn in (False, True):
        phot = PSFPhotometry(psf, (5, 5), grouper=SourceGrouper(4), likelihood="poisson",
                             read_noise=3.0, subtract_neighbors=sn)
        tab = _fit(phot, counts, init)
        pull = (np.asarray(tab["flux_fit"]) - truth["flux"]) / np.asarray(tab["flux_err"])
        flags = np.asarray(tab["flags"])
        pulls[sn] = pull[np.isfinite(pull) & ((flags & ~PSF_FLAGS.CONTAMINATED) == 0)]
        clean[sn] = pull[np.isfinite(pull) & (flags == 0)]
    n = len(pulls[True])
    assert n > 350
    assert abs(np.mean(pulls[True])) < 4 / np.sqrt(n)
    assert 0.85 < np.std(pulls[True]) < 1.15
    assert len(clean[True]) == n  # all-star: no unmodelled light, never 'contaminated'
    assert np.mean(pulls[False]) > 0.5  # neighbours' wings push the grouped fluxes up
    # ... and the grouped fits they push by more than their error are flagged contaminated
    assert np.mean(clean[False]) < 0.5 * np.mean(pulls[False])
