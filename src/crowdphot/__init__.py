"""crowdphot: fast, photutils-compatible PSF photometry for crowded astronomical images.

Data flows one way: image -> detect -> group -> fit -> catalog. Every public name is importable
from the top level (``from crowdphot import PSFPhotometry``) with photutils 3's name and
arguments; the submodules are imported lazily so that ``import crowdphot`` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Set True to get plain QTables without the deprecated photutils < 3 column aliases.
future_column_names = False

# public name -> submodule that defines it
_EXPORTS = {
    # PSF models
    "CircularGaussianPSF": "crowdphot.psf.analytic",
    "GaussianPSF": "crowdphot.psf.analytic",
    "CircularGaussianPRF": "crowdphot.psf.analytic",
    "GaussianPRF": "crowdphot.psf.analytic",
    "CircularGaussianSigmaPRF": "crowdphot.psf.analytic",
    "MoffatPSF": "crowdphot.psf.analytic",
    "AiryDiskPSF": "crowdphot.psf.analytic",
    "ImagePSF": "crowdphot.psf.image",
    "GriddedPSFModel": "crowdphot.psf.gridded",
    "STDPSFGrid": "crowdphot.psf.io",
    "stdpsf_reader": "crowdphot.psf.io",
    "webbpsf_reader": "crowdphot.psf.io",
    "read_psf_grid": "crowdphot.psf.io",
    "jwst_like_psf_grid": "crowdphot.datasets",
    "jwst_like_psf_grid_path": "crowdphot.datasets",
    "write_jwst_like_psf_grid": "crowdphot.datasets",
    # simulation
    "make_psf_model_image": "crowdphot.simulate",
    "make_model_image": "crowdphot.simulate",
    "make_noise_image": "crowdphot.simulate",
    "make_model_params": "crowdphot.simulate",
    "make_random_xycoords": "crowdphot.simulate",
    "render_image": "crowdphot.render",
    # detection, apertures, background, grouping, matching
    "IRAFStarFinder": "crowdphot.detect",
    "DAOStarFinder": "crowdphot.detect",
    "NoDetectionsWarning": "crowdphot.detect",
    "use_future_column_names": "crowdphot._tables",
    "CircularAperture": "crowdphot.aperture",
    "CircularAnnulus": "crowdphot.aperture",
    "aperture_photometry": "crowdphot.aperture",
    "LocalBackground": "crowdphot.background",
    "MMMBackground": "crowdphot.background",
    "MedianBackground": "crowdphot.background",
    "MeanBackground": "crowdphot.background",
    "ModeEstimatorBackground": "crowdphot.background",
    "ApertureMask": "crowdphot.aperture",
    "circular_aperture_sums": "crowdphot.aperture",
    "SourceGrouper": "crowdphot.group",
    "SourceGroups": "crowdphot.group",
    "match_summary": "crowdphot.match",
    "PSF_FLAGS": "crowdphot.flags",
    "decode_psf_flags": "crowdphot.flags",
    "combine_flags": "crowdphot.flags",
    "match_xy": "crowdphot.match",
    "match_catalogs": "crowdphot.match",
    "make_random_cmap": "crowdphot.utils",
    "simple_norm": "crowdphot.utils",
    # photometry
    "PSFPhotometry": "crowdphot.photometry",
    "IterativePSFPhotometry": "crowdphot.iterative",
    "PSFPhotometryResult": "crowdphot.photometry",
    "run_psf_photometry": "crowdphot.photometry",
    "decode_flags": "crowdphot.flags",
    "photometry_tiled": "crowdphot.tiled",
    "tile_grid": "crowdphot.tiled",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'crowdphot' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
