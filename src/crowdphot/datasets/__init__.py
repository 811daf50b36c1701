"""Simulated images and the built-in JWST-like PSF grid, as photutils.datasets.
"""

from crowdphot.core.lazy import lazy_exports

_EXPORTS = {
    "make_model_image": "crowdphot.datasets.simulation",
    "make_model_params": "crowdphot.datasets.simulation",
    "make_noise_image": "crowdphot.datasets.simulation",
    "make_random_xycoords": "crowdphot.datasets.simulation",
    "apply_poisson_noise": "crowdphot.datasets.noise",
    "make_random_models_table": "crowdphot.datasets.model_params",
    "params_table_to_models": "crowdphot.datasets.model_params",
    "make_wcs": "crowdphot.datasets.wcs",
    "jwst_like_psf_grid": "crowdphot.datasets.jwst",
    "jwst_like_psf_grid_path": "crowdphot.datasets.jwst",
    "write_jwst_like_psf_grid": "crowdphot.datasets.jwst",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
