"""Scene builders and helpers shared by several test modules.

``LocalGaussianPSF`` is a minimal batched model (no crowdphot PSF code beyond the mixin),
``column_values`` strips units from a table column, and ``clear_photutils_flat_model_cache``
is the body of the autouse fixture that the photutils-parity modules declare with
``pytest.fixture(autouse=True)(clear_photutils_flat_model_cache)``.
"""

import numpy as np
from astropy.modeling import Fittable2DModel, Parameter

from crowdphot.core.batched import BatchedPSFMixin


class LocalGaussianPSF(BatchedPSFMixin, Fittable2DModel):
    """Minimal batched model: a normalised circular Gaussian evaluated at pixel centres."""

    flux = Parameter(default=1.0)
    x_0 = Parameter(default=0.0)
    y_0 = Parameter(default=0.0)
    sigma = Parameter(default=1.5)

    @staticmethod
    def evaluate(x, y, flux, x_0, y_0, sigma):
        r2 = (x - x_0) ** 2 + (y - y_0) ** 2
        return flux / (2 * np.pi * sigma**2) * np.exp(-0.5 * r2 / sigma**2)

    def _unit(self, x, y, x0, y0):
        shape = (len(x0),) + (1,) * (np.ndim(x) - 1)
        return self.evaluate(x, y, 1.0, x0.reshape(shape), y0.reshape(shape), self.sigma.value)

    @property
    def bounding_box(self):
        half = 4 * self.sigma.value
        return ((self.y_0 - half, self.y_0 + half), (self.x_0 - half, self.x_0 + half))


def column_values(col):
    """A table column (plain or Quantity) as a float array."""
    return np.asarray(getattr(col, "value", col), dtype=float)


def clear_photutils_flat_model_cache():
    """Work around a photutils 3.0 bug in the oracle.

    photutils caches its grouped-model class by ``(n_sources, model type)`` only, ignoring which
    parameters are fixed: after a grouped fit with a free ``fwhm`` the next grouped fit of the
    same model type with a fixed ``fwhm`` fails (reshape error), and vice versa.
    """
    from photutils.psf import _components

    _components._FLAT_MODEL_CACHE.clear()


def faint_edge_scene(n_inits=1):
    """Issue #10's faint field: 300 stars (flux 20-60, noise 5, CircularGaussianPRF FWHM 3) on
    128², edges included, seeded; ``n_inits`` starts jittered by 0.3 px drawn in turn.

    Returns ``(psf, data, truth, inits)``.
    """
    from astropy.table import QTable

    from crowdphot import CircularGaussianPRF
    from crowdphot.datasets import make_model_image

    rng = np.random.default_rng(1)
    psf = CircularGaussianPRF(fwhm=3.0)
    n, shape = 300, (128, 128)
    x, y = rng.uniform(-1, shape[1], n), rng.uniform(-1, shape[0], n)
    truth = QTable({"x_0": x, "y_0": y, "flux": rng.uniform(20, 60, n)})
    data = make_model_image(shape, psf, truth, model_shape=(15, 15))
    data = data + rng.normal(0, 5, shape)
    inits = [QTable({"x": x + rng.normal(0, 0.3, n), "y": y + rng.normal(0, 0.3, n)})
             for _ in range(n_inits)]
    return psf, data, truth, inits
