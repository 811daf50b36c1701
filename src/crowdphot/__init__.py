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
    "CircularGaussianPSF": "crowdphot.models.analytic",
    "GaussianPSF": "crowdphot.models.analytic",
    "CircularGaussianPRF": "crowdphot.models.analytic",
    "GaussianPRF": "crowdphot.models.analytic",
    "CircularGaussianSigmaPRF": "crowdphot.models.analytic",
    "MoffatPSF": "crowdphot.models.analytic",
    "AiryDiskPSF": "crowdphot.models.analytic",
    "ImagePSF": "crowdphot.models.image",
    "GriddedPSFModel": "crowdphot.models.gridded",
    "STDPSFGrid": "crowdphot.models.grid_io",
    "stdpsf_reader": "crowdphot.models.gridded",
    "webbpsf_reader": "crowdphot.models.gridded",
    "read_psf_grid": "crowdphot.models.gridded",
    "jwst_like_psf_grid": "crowdphot.datasets.jwst",
    "jwst_like_psf_grid_path": "crowdphot.datasets.jwst",
    "write_jwst_like_psf_grid": "crowdphot.datasets.jwst",
    # simulation
    "make_psf_model_image": "crowdphot.datasets.simulation",
    "make_model_image": "crowdphot.datasets.simulation",
    "make_noise_image": "crowdphot.datasets.simulation",
    "make_model_params": "crowdphot.datasets.simulation",
    "make_random_xycoords": "crowdphot.datasets.simulation",
    "apply_poisson_noise": "crowdphot.datasets.noise",
    "make_random_models_table": "crowdphot.datasets.model_params",
    "params_table_to_models": "crowdphot.datasets.model_params",
    "make_wcs": "crowdphot.datasets.wcs",
    "render_image": "crowdphot.core.render",
    # detection, apertures, background, grouping, matching
    "IRAFStarFinder": "crowdphot.detection.finders",
    "DAOStarFinder": "crowdphot.detection.finders",
    "StarFinder": "crowdphot.detection.starfinder",
    "find_peaks": "crowdphot.detection.peakfinder",
    "NoDetectionsWarning": "crowdphot.utils.exceptions",
    "use_future_column_names": "crowdphot.utils._tables",
    "CircularAperture": "crowdphot.aperture.core",
    "CircularAnnulus": "crowdphot.aperture.core",
    "aperture_photometry": "crowdphot.aperture.core",
    "LocalBackground": "crowdphot.background.core",
    "MMMBackground": "crowdphot.background.core",
    "MedianBackground": "crowdphot.background.core",
    "MeanBackground": "crowdphot.background.core",
    "ModeEstimatorBackground": "crowdphot.background.core",
    "Background2D": "crowdphot.background.background_2d",
    "BackgroundBase": "crowdphot.background.core",
    "BackgroundRMSBase": "crowdphot.background.estimators",
    "SExtractorBackground": "crowdphot.background.estimators",
    "BiweightLocationBackground": "crowdphot.background.estimators",
    "StdBackgroundRMS": "crowdphot.background.estimators",
    "MADStdBackgroundRMS": "crowdphot.background.estimators",
    "BiweightScaleBackgroundRMS": "crowdphot.background.estimators",
    "BkgZoomInterpolator": "crowdphot.background.interpolators",
    "BkgIDWInterpolator": "crowdphot.background.interpolators",
    "ApertureMask": "crowdphot.aperture.core",
    "BoundingBox": "crowdphot.aperture.bounding_box",
    "SkyCircularAperture": "crowdphot.aperture.sky",
    "SkyCircularAnnulus": "crowdphot.aperture.sky",
    "circular_aperture_sums": "crowdphot.aperture.core",
    "SourceGrouper": "crowdphot.psf.groupers",
    "SourceGroups": "crowdphot.psf.groupers",
    "match_summary": "crowdphot.utils.match",
    "PSF_FLAGS": "crowdphot.psf.flags",
    "decode_psf_flags": "crowdphot.psf.flags",
    "combine_flags": "crowdphot.psf.flags",
    "match_xy": "crowdphot.utils.match",
    "match_catalogs": "crowdphot.utils.match",
    "make_random_cmap": "crowdphot.utils.colormaps",
    "simple_norm": "crowdphot.utils.colormaps",
    # photometry
    "PSFPhotometry": "crowdphot.psf.photometry",
    "make_psf_model": "crowdphot.psf.model_helpers",
    "fit_2dgaussian": "crowdphot.psf.utils",
    "fit_fwhm": "crowdphot.psf.utils",
    "IterativePSFPhotometry": "crowdphot.psf.iterative",
    "PSFPhotometryResult": "crowdphot.psf.photometry",
    "run_psf_photometry": "crowdphot.psf.photometry",
    "cramer_rao_bound": "crowdphot.psf.likelihood",
    "decode_flags": "crowdphot.psf.flags",
    "photometry_tiled": "crowdphot.pipeline.tiles",
    "tile_grid": "crowdphot.pipeline.tiles",
    "artificial_star_test": "crowdphot.pipeline.ast",
    "ast_summary": "crowdphot.pipeline.ast_summary",
    "completeness_map": "crowdphot.pipeline.ast_summary",
    "Exposure": "crowdphot.pipeline.multi",
    "fit_exposures": "crowdphot.pipeline.multi",
    "detect_on_stack": "crowdphot.pipeline.multi_sky",
    "residual_images": "crowdphot.pipeline.multi_sky",
    "fit_exposures_tiled": "crowdphot.pipeline.multi_tiles",
    "ExposureFile": "crowdphot.pipeline.multi_tiles",
    "detect_tiled": "crowdphot.pipeline.multi_tiles",
    # empirical PSFs
    "EPSFStar": "crowdphot.psf.epsf_stars",
    "EPSFStars": "crowdphot.psf.epsf_stars",
    "LinkedEPSFStar": "crowdphot.psf.epsf_stars",
    "extract_stars": "crowdphot.psf.epsf_stars",
    "EPSFBuilder": "crowdphot.psf.epsf_builder",
    "EPSFBuildResult": "crowdphot.psf.epsf_builder",
    "EPSFFitter": "crowdphot.psf.epsf_builder",
    "build_gridded_psf": "crowdphot.psf.empirical",
    "refine_psf": "crowdphot.psf.empirical",
    "select_psf_stars": "crowdphot.psf.empirical",
    "write_stpsf_grid": "crowdphot.psf.empirical",
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
