"""PSF models that every contract test in ``test_psf_contract.py`` runs on.

Each entry of ``PSF_CASES`` is ``PSFCase(id, factory)`` or ``PSFCase(id, factory, tol)``
(a plain ``(id, factory[, tol])`` tuple works too). ``factory()`` returns a freshly configured
model; ``tol`` overrides entries of ``DEFAULT_TOL``:

``norm``         absolute tolerance on the sum of a large unit-flux stamp (expected 1)
``norm_shape``   stamp shape (ny, nx) used for that sum
``norm_expect``  expected sum (for models that are not normalised to 1)
``centroid``     absolute tolerance (pixels) on the first moment vs (x0, y0); None skips the
                 check (asymmetric models)
``stamp_shape``  stamp shape used by the stamp, gradient and pickling checks
``value_rtol``   tolerance, relative to the stamp peak, between batched and astropy values
``grad_rtol``    tolerance, relative to the largest gradient, between the analytic gradient and
                 central finite differences
``fd_step``      finite-difference step in pixels
``region``       half width (pixels) around the origin from which test positions are drawn
``origin``       (x, y) added to the random test positions (for models defined on a finite
                 support away from (0, 0))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from crowdphot.models.analytic import (
    AiryDiskPSF,
    CircularGaussianPRF,
    CircularGaussianPSF,
    CircularGaussianSigmaPRF,
    GaussianPRF,
    GaussianPSF,
    MoffatPSF,
)

DEFAULT_TOL = {
    "norm": 1e-9,
    "norm_shape": (41, 41),
    "norm_expect": 1.0,
    "centroid": 1e-6,
    "stamp_shape": (13, 11),
    "value_rtol": 1e-12,
    "grad_rtol": 1e-6,
    "fd_step": 1e-5,
    "region": 3.0,
    "origin": (20.0, 15.0),
}


class PSFCase(NamedTuple):
    id: str
    factory: Callable
    tol: dict | None = None


def case_tol(case):
    """Merged tolerances of one case (defaults overridden by the case's own)."""
    case = PSFCase(*case)
    return {**DEFAULT_TOL, **(case.tol or {})}


# Moffat with beta = 3 loses (1 + R**2 / alpha**2) ** (1 - beta) of its flux beyond radius R:
# about 5e-5 outside a 61-pixel stamp for alpha = 2.2. Airy wings fall as 1 / r, so a
# 101-pixel stamp still misses about 1 % (photutils' own test uses rtol=0.015).
PSF_CASES = [
    PSFCase("CircularGaussianPSF", lambda: CircularGaussianPSF(fwhm=2.7)),
    PSFCase("CircularGaussianPSF-narrow", lambda: CircularGaussianPSF(fwhm=1.9),
            {"norm": 3e-5, "centroid": 1e-4}),
    PSFCase("GaussianPSF-rotated",
            lambda: GaussianPSF(x_fwhm=3.4, y_fwhm=2.2, theta=31.0), {"centroid": 1e-5}),
    PSFCase("GaussianPSF-aligned", lambda: GaussianPSF(x_fwhm=2.5, y_fwhm=3.5)),
    PSFCase("CircularGaussianPRF", lambda: CircularGaussianPRF(fwhm=2.1)),
    PSFCase("CircularGaussianPRF-sharp", lambda: CircularGaussianPRF(fwhm=0.8),
            {"centroid": 5e-2}),
    PSFCase("CircularGaussianSigmaPRF", lambda: CircularGaussianSigmaPRF(sigma=1.3)),
    PSFCase("GaussianPRF-aligned", lambda: GaussianPRF(x_fwhm=2.0, y_fwhm=3.0)),
    # the rotated PRF is not an exact pixel integral, so its grid sum is only close to 1
    PSFCase("GaussianPRF-rotated", lambda: GaussianPRF(x_fwhm=3.0, y_fwhm=2.2, theta=-40.0),
            {"norm": 1e-3, "centroid": 1e-5}),
    PSFCase("MoffatPSF", lambda: MoffatPSF(alpha=2.2, beta=3.0),
            {"norm": 2e-4, "norm_shape": (61, 61), "centroid": 2e-3}),
    PSFCase("AiryDiskPSF", lambda: AiryDiskPSF(radius=2.6),
            {"norm": 2e-2, "norm_shape": (101, 101), "centroid": 2e-2}),
]

# --- image models: appended by the image/gridded work ---
import numpy as np  # noqa: E402

from crowdphot.models.gridded import GriddedPSFModel  # noqa: E402
from crowdphot.models.image import ImagePSF  # noqa: E402


def _gaussian_image(shape, xc, yc, sx, sy, total):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.exp(-0.5 * (((xx - xc) / sx) ** 2 + ((yy - yc) / sy) ** 2))
    return img * (total / img.sum())


def _image_psf_os4():
    # peak off the array centre, at (29, 27) in samples; origin points at it
    data = _gaussian_image((61, 65), 29.0, 27.0, 5.0, 4.5, 16.0)
    return ImagePSF(data, oversampling=4, origin=(29.0, 27.0))


def _gridded_psf():
    from itertools import product

    from astropy.nddata import NDData

    # 2x2 grid around the contract origin (20, 15), oversampling 2, widths varying with x and y
    psfs = [_gaussian_image((41, 41), 20.0, 20.0, 3.4 + 0.6 * i, 3.2 + 0.3 * j, 4.0)
            for j in range(2) for i in range(2)]
    meta = {"grid_xypos": [(x, y) for y, x in product([0.0, 30.0], [0.0, 40.0])],
            "oversampling": 2}
    return GriddedPSFModel(NDData(np.array(psfs), meta=meta))


PSF_CASES += [
    PSFCase("ImagePSF-os1", lambda: ImagePSF(_gaussian_image((31, 31), 15.0, 15.0, 2.0, 2.0, 1.0)),
            {"norm": 1e-4, "centroid": 1e-3, "value_rtol": 1e-10}),
    PSFCase("ImagePSF-os4-origin", _image_psf_os4,
            {"norm": 1e-4, "centroid": 1e-3, "value_rtol": 1e-10}),
    PSFCase("GriddedPSFModel-2x2", _gridded_psf,
            {"norm": 1e-4, "centroid": 1e-3, "value_rtol": 1e-10}),
]
