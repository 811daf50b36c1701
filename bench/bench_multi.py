"""Joint fit of dithered exposures in sky coordinates (``fit_exposures``, issue #15).

Scene: stars on a jittered grid (isolated at ``fit_shape`` 5) plus a close companion for a
third of them, seen by six exposures (4 in filter A, 2 in filter B) with sub-pixel-to-3-pixel
dithers and rotations up to 1.5 deg, TAN WCS at 0.1"/px, the gridded PSF of ``grid_models``
(filter A) and a wider Gaussian PRF (filter B), sky + Poisson noise. Initial positions: truth
+ 0.03" scatter, no initial fluxes.

Reported: the joint run time against N_exposures x one crowdphot single-image run
(``PSFPhotometry`` on one exposure from the same start; issue goal <= 1) and, as the photutils
column, 6 x photutils' ``PSFPhotometry`` on exposure 0 (photutils cannot fit jointly);
quality: median position error joint / (single / sqrt(4)) (goal <= 1.15), ra/dec pull std,
per-filter flux bias. ``--quick``: 256^2 exposures.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_of, grid_models, row  # noqa: E402

SCALE = 0.1
RA0, DEC0 = 150.0, 2.2


def _wcs(shape, dx, dy, rot):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [RA0, DEC0]
    w.wcs.crpix = [shape[1] / 2 + 1 + dx, shape[0] / 2 + 1 + dy]
    th, s = np.deg2rad(rot), SCALE / 3600
    w.wcs.cd = [[-s * np.cos(th), s * np.sin(th)], [s * np.sin(th), s * np.cos(th)]]
    return w


def scene(shape, psf_a, seed=0):
    from crowdphot import CircularGaussianPRF
    from crowdphot.core.render import render_image
    from crowdphot.pipeline.multi import Exposure

    rng = np.random.default_rng(seed)
    spacing = 12.0
    n_side = int((min(shape) - 30) / spacing)
    g = (np.arange(n_side) - (n_side - 1) / 2) * spacing
    gx, gy = (a.ravel() for a in np.meshgrid(g, g))
    xi = gx + rng.uniform(-1, 1, gx.size)
    eta = gy + rng.uniform(-1, 1, gx.size)
    comp = rng.random(gx.size) < 1 / 3
    ang = rng.uniform(0, 2 * np.pi, comp.sum())
    sep = rng.uniform(2.5, 4.0, comp.sum())
    xi = np.concatenate([xi, xi[comp] + sep * np.cos(ang)]) * SCALE / 3600
    eta = np.concatenate([eta, eta[comp] + sep * np.sin(ang)]) * SCALE / 3600
    dec = DEC0 + eta
    ra = RA0 - xi / np.cos(np.deg2rad(DEC0))  # xi east = -x; small field
    flux_a = rng.uniform(2000, 20000, ra.size)
    flux_b = 0.6 * flux_a
    psf_b = CircularGaussianPRF(fwhm=3.1)
    exps = []
    for k in range(6):
        w = _wcs(shape, *rng.uniform(-3, 3, 2), rng.uniform(-1.5, 1.5))
        psf, flux, filt = (psf_a, flux_a, "A") if k < 4 else (psf_b, flux_b, "B")
        x, y = w.all_world2pix(ra, dec, 0)
        img = render_image(shape, psf, np.asarray(x), np.asarray(y), flux)  # full support
        err = np.sqrt(25.0 + np.clip(img, 0, None))
        exps.append(Exposure(img + rng.normal(size=shape) * err, err, None, w, psf, filt))
    ra_i = ra + rng.normal(0, 0.03, ra.size) / 3600 / np.cos(np.deg2rad(DEC0))
    dec_i = dec + rng.normal(0, 0.03, ra.size) / 3600
    return exps, ra, dec, {"A": flux_a, "B": flux_b}, ra_i, dec_i


def run(quick=False):
    from astropy.table import QTable, Table
    from photutils.psf import PSFPhotometry as PPSFPhotometry
    from photutils.psf import SourceGrouper as PSourceGrouper

    from crowdphot import PSFPhotometry, SourceGrouper, fit_exposures

    shape = (256, 256) if quick else (512, 512)
    repeat = 1 if quick else 2
    pmodel, psf_a, grid_note = grid_models()
    exps, ra, dec, fluxes, ra_i, dec_i = scene(shape, psf_a)
    cat = Table({"ra": ra_i, "dec": dec_i})
    sep_px = 6.0

    t_joint, joint = best_of(lambda: fit_exposures(exps, cat, group_separation=sep_px * SCALE),
                             repeat=repeat)
    t_wide, wide = best_of(lambda: fit_exposures(exps, cat, group_separation=sep_px * SCALE,
                                                 model_shape=25), repeat=1)
    t_one, single = best_of(lambda: fit_exposures(exps[:1], cat,
                                                  group_separation=sep_px * SCALE),
                            repeat=repeat)
    e0 = exps[0]
    x0, y0 = e0.wcs.all_world2pix(ra_i, dec_i, 0)
    init = QTable({"x": x0, "y": y0})

    def ours():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return PSFPhotometry(psf_a, (5, 5), grouper=SourceGrouper(sep_px),
                                 aperture_radius=3)(e0.data, error=e0.error, init_params=init)

    def theirs():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            PPSFPhotometry(pmodel, (5, 5), grouper=PSourceGrouper(sep_px), aperture_radius=3)(
                e0.data, error=e0.error, init_params=init)

    t_single_img, _ = best_of(ours, repeat=repeat)
    t_phot = 6 * best_of(theirs, repeat=1, warmup=False)[0]

    ok = joint["flags"] == 0
    cosd = np.cos(np.deg2rad(dec))
    dra = (joint["ra"].value - ra) * cosd * 3600
    ddec = (joint["dec"].value - dec) * 3600
    sra = (single["ra"].value - ra) * cosd * 3600
    sdec = (single["dec"].value - dec) * 3600
    sok = single["flags"] == 0
    ratio = np.median(np.hypot(dra, ddec)[ok]) / (np.median(np.hypot(sra, sdec)[sok]) / 2)
    bias = {f: 100 * np.median(joint[f"flux_{f}"][ok] / t[ok] - 1) for f, t in fluxes.items()}
    wok = wide["flags"] == 0
    wbias = {f: 100 * np.median(wide[f"flux_{f}"][wok] / t[wok] - 1) for f, t in fluxes.items()}
    note = (f"{len(ra)} stars x 6 exposures {shape[0]}^2; joint / (6 x single-image "
            f"PSFPhotometry {t_single_img:.3f} s) = x{t_joint / (6 * t_single_img):.2f}, "
            f"joint / (6 x fit_exposures on one {t_one:.3f} s) = x{t_joint / (6 * t_one):.2f}; "
            f"median pos err joint/(single/2) = {ratio:.3f} (goal <= 1.15); pull std ra "
            f"{np.std(dra[ok] / joint['ra_err'].value[ok]):.3f} dec "
            f"{np.std(ddec[ok] / joint['dec_err'].value[ok]):.3f}; flux bias A {bias['A']:+.3f} %"
            f" B {bias['B']:+.3f} % (model_shape=25, as rendered: {t_wide:.3f} s, A "
            f"{wbias['A']:+.3f} % B {wbias['B']:+.3f} %); {ok.sum()} / {len(ok)} unflagged; "
            f"photutils column: 6 x its single-image fit of exposure 0 (it cannot fit jointly); "
            f"{grid_note}")
    print("   " + note, flush=True)
    return [row("joint fit of 6 dithered exposures (fit_exposures)", t_phot, t_joint, note)]


if __name__ == "__main__":  # pragma: no cover
    for r in run(quick="--quick" in sys.argv):
        print(f"{r['name']:<55} photutils {r['photutils_s']:8.3f} s  crowdphot "
              f"{r['crowdphot_s']:8.3f} s  x{r['ratio']:.1f}")
