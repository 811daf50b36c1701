"""The contamination test (``crowdphot.psf.contamination``, flags 65536 and 131072): cost.

Scene: Gaussian PRF FWHM 3, ``n`` stars of flux U(50, 2000) at uniform positions on a square
image (density ~0.019 per pixel, the faint crowded field's), noise 5, fitted from the true
positions + 0.3 px jitter with ``PSFPhotometry(psf, (5, 5), aperture_radius=3,
blend_test=False)``, with and without ``SourceGrouper(6)``. Reported: the time of the test as
PSFPhotometry runs it (``_contamination``, timed inside the call) against the whole call
(which includes it), and how many stars it flags.

photutils has no such test: the test's cost has no peer. ``--quick``: 5000 stars.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
from astropy.table import QTable

import crowdphot.psf.photometry as photometry
from crowdphot import CircularGaussianPRF, PSFPhotometry, SourceGrouper, make_model_image


def run(n):
    psf = CircularGaussianPRF(fwhm=3.0)
    side = int(round(np.sqrt(n / 0.019)))
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, side, n), rng.uniform(0, side, n)
    truth = QTable({"x_0": x, "y_0": y, "flux": rng.uniform(50, 2000, n)})
    img = make_model_image((side, side), psf, truth, model_shape=(15, 15))
    img = img + rng.normal(0, 5, img.shape)
    init = QTable({"x": x + rng.normal(0, .3, n), "y": y + rng.normal(0, .3, n)})
    err = np.full(img.shape, 5.0)
    spent = [0.0]
    original = photometry._contamination

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        original(*args, **kwargs)
        spent[0] += time.perf_counter() - t0

    for name, kw in (("no grouper", {}), ("SourceGrouper(6)", {"grouper": SourceGrouper(6)})):
        spent[0] = 0.0
        photometry._contamination = timed
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                tab = PSFPhotometry(psf, (5, 5), aperture_radius=3, blend_test=False,
                                    group_warning_threshold=10**9, **kw)(
                    img, error=err, init_params=init)
                total = time.perf_counter() - t0
        finally:
            photometry._contamination = original
        flags = np.asarray(tab["flags"])
        print(f"{n} stars on {side}², {name}: call {total:.2f} s, test {spent[0]:.2f} s "
              f"({100 * spent[0] / total:.0f} %); contaminated {np.sum(flags & 65536 > 0)}, "
              f"unconstrained {np.sum(flags & 131072 > 0)}")


if __name__ == "__main__":
    run(5000 if "--quick" in sys.argv else 20000)
