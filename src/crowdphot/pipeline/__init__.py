"""Whole-image workflows above the shells: tiles for mosaics, optionally over Dask."""

from crowdphot.core.lazy import lazy_exports

_EXPORTS = {
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
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
