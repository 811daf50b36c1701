"""ePSF building benchmark: EPSFBuilder on the same extracted stars, crowdphot vs photutils.

Row: 300+ isolated stars (CircularGaussianPRF, fwhm 2.7, noise), 25 x 25 cutouts, oversampling
4, 5 iterations (``center_accuracy`` tiny so both run all 5), default smoothing, clipping,
recentering and fitter. The two ePSFs must agree to 1e-3 of the peak and the fitted centres to
1e-3 px. ``--quick``: 60 stars.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_of, row  # noqa: E402


def _scene(n_stars):
    from astropy.nddata import NDData
    from astropy.table import Table

    from crowdphot import CircularGaussianPRF, make_noise_image, make_psf_model_image

    side = int(np.ceil(np.sqrt(n_stars))) * 40 + 60
    data, params = make_psf_model_image((side, side), CircularGaussianPRF(fwhm=2.7), n_stars,
                                        model_shape=(11, 11), flux=(2000, 20000),
                                        min_separation=26, border_size=20, seed=1)
    data = data + make_noise_image(data.shape, mean=0.0, stddev=1.0, seed=2)
    return NDData(data), Table({"x": params["x_0"], "y": params["y_0"]})


def bench_build(quick=False):
    import photutils.psf as ppsf

    import crowdphot.psf as cpsf

    nddata, cat = _scene(60 if quick else 340)
    kw = {"oversampling": 4, "maxiters": 5, "progress_bar": False, "center_accuracy": 1e-12}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stars_p = ppsf.extract_stars(nddata, cat, size=25)
        stars_c = cpsf.extract_stars(nddata, cat, size=25)
    n = len(stars_c)
    t_p, (epsf_p, fit_p) = best_of(lambda: ppsf.EPSFBuilder(**kw)(stars_p), repeat=1,
                                   warmup=False)
    t_c, (epsf_c, fit_c) = best_of(lambda: cpsf.EPSFBuilder(**kw)(stars_c),
                                   repeat=1 if quick else 3)
    peak = epsf_p.data.max()
    rel = np.abs(epsf_c.data - epsf_p.data).max() / peak
    dxy = np.abs(fit_c.center_flat - fit_p.center_flat).max()
    if not (rel <= 1e-3 and dxy <= 1e-3):
        raise AssertionError(f"ePSFs differ by {rel:.3g} of the peak, centres by {dxy:.3g} px")
    return row(f"EPSFBuilder, {n} stars, 25x25 cutouts, oversampling 4, 5 iterations", t_p,
               t_c, f"max |diff| {rel:.1e} of peak, centres {dxy:.1e} px")


def run(quick=False):
    return [bench_build(quick)]


if __name__ == "__main__":
    for r in run("--quick" in sys.argv):
        print(f"{r['name']}: photutils {r['photutils_s']:.3f} s, crowdphot "
              f"{r['crowdphot_s']:.3f} s, ratio {r['ratio']:.1f}x ({r['note']})")
